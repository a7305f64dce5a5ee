"""One progress bar for a whole report, in units that follow the work.

The pipelines train in other processes (each ``03_train`` notebook is a papermill kernel, each
MMDetection run a subprocess), so the bar cannot be fed by the training loops: a poller thread
reads every tracked run folder's ``metrics.jsonl`` (and ``train_done.json``) every few seconds.

The unit is one fine-tune iteration: on the 2-core machine about 0.10 s of wall time (0.21 s
per process, two processes side by side). Every other piece of work counts as the iterations
its wall time is worth (:data:`WORK`, measured on the report of record): an iteration of the
backbone's pretraining (0.13 s, one process on both cores) counts 1.25, an evaluation 100. So
the bar's rate, and tqdm's ETA from it, hold across pretraining, training, evaluation and the
notebooks, and the bar no longer sits at 100 % while evaluations run.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

# the wall time of each piece of work that is not a training iteration, in iterations (wall
# seconds / 0.10 s), from the notebook durations of the report of record (``make report``)
WORK = {
    "data": 170,  # 01_data: drawing both benchmarks (2500 + 500 images at 128 px: 11 s) and its figures
    "pretrain_data": 90,  # the pretraining benchmark (2500 images: 9 s), before its first iteration
    "pretrain_iteration": 1.25,  # one pretraining iteration (0.13 s, one process on both cores)
    "evaluate": 100,  # one 04_evaluate: both benchmarks, one thread, two side by side
    "bootstrap": 15,  # one run's bootstrap AP samples (credited with its evaluation)
    "method": 60,  # 02_method
    "results": 100,  # 05_results (figures and tables)
    "notebook": 100,  # any other notebook (the MMDetection and controls sections)
    "render": 5,  # one executed notebook rendered to HTML
    "index": 20,  # index.html and README's block (the claims and their intervals)
    "kernel": 15,  # a notebook whose work is already on disk: a kernel start and cells that read
}


@dataclass
class Tracked:
    """A training run whose iterations the bar counts: its folder and its planned iterations
    (``max_iter`` of its config, read from ``config.json`` once the run has written it)."""

    run_dir: Path
    planned: int
    weight: float = 1.0  # units per iteration
    start: float = 0.0  # units credited once the run has started (config.json): what it needed first


def iterations_done(run_dir: Path, planned: int) -> tuple[bool, bool, int, int]:
    """``(started, finished, iterations done, iterations planned)`` of one run folder, read from
    its files (``planned`` until its ``config.json`` says ``max_iter``)."""
    from dynrcnn.io import read_json, read_jsonl
    from dynrcnn.rundir import runs

    run_dir = Path(run_dir)
    cfg = read_json(run_dir / runs.CONFIG)
    total = int((cfg or {}).get("max_iter") or planned)
    if (run_dir / runs.TRAIN_DONE).is_file():
        return True, True, total, total
    if (run_dir / runs.METRICS).is_file():
        last = read_jsonl(run_dir / runs.METRICS)[-1:]
        return True, False, int(last[0]["iteration"]) if last else 0, total
    return cfg is not None, False, 0, total


class ReportProgress:
    """The report's one bar: ``total`` is every tracked run's iterations plus the other work
    (:data:`WORK` units) declared up front; :meth:`done` credits a finished piece of work,
    :meth:`track` adds runs to poll, :meth:`phase` says what runs now. A context manager: the
    poller starts on entry and the bar closes, refreshed a last time, on exit."""

    def __init__(self, desc: str, work: float = 0.0, tracked=(), progress: bool = True, interval: float = 2.0):
        self.desc, self.work, self.interval = desc, float(work), interval
        self.tracked: list[Tracked] = []
        self.disable = not progress
        self.credited = 0.0
        self._text = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._bar = None
        self._t0 = time.perf_counter()
        self.marks: list[tuple[str, float]] = []  # (phase key, perf_counter when it began)
        self.track(tracked)

    # what the pipeline says
    def track(self, runs) -> None:
        """Count these :class:`Tracked` runs' iterations; a run already finished is no work (it
        is reused) and is left out, so that it neither fills the bar nor speeds up the ETA."""
        todo = [t for t in runs if not iterations_done(t.run_dir, t.planned)[1]]
        with self._lock:
            self.tracked.extend(todo)

    def done(self, units: float, phase: str | None = None) -> None:
        """Credit ``units`` of declared work (a finished evaluation, notebook, ...); ``phase``: what
        runs next (:meth:`phase`)."""
        with self._lock:
            self.credited += units
        if phase is not None:
            self.phase(phase)
        else:
            self.refresh()

    def write(self, message: str) -> None:
        """A line on stderr above the bar (the bar is redrawn below it)."""
        import sys

        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)

    def phase(self, text: str, key: str | None = None) -> None:
        """Say what runs now; ``key`` (default ``text``) names the phase in :meth:`phase_seconds`."""
        with self._lock:
            self._text = text
            self.marks.append((key or text, time.perf_counter()))
        self.refresh()

    def phase_seconds(self) -> dict[str, float]:
        """Wall seconds per phase key, in the order the phases first began: each phase lasts until
        the next one begins, the last until now; the time before the first phase is ``planning``
        (a key that comes back, e.g. one per sequential notebook, adds up)."""
        now = time.perf_counter()
        marks = [("planning", self._t0)] + list(self.marks)
        out: dict[str, float] = {}
        for (key, start), (_, end) in zip(marks, marks[1:] + [("", now)]):
            out[key] = out.get(key, 0.0) + end - start
        return out

    def state(self) -> dict:
        """Runs finished / tracked, iterations done / planned, units done / total."""
        with self._lock:
            tracked, credited, work = list(self.tracked), self.credited, self.work
        finished = it_done = units_done = it_total = units_total = 0
        for t in tracked:
            started, fin, n, total = iterations_done(t.run_dir, t.planned)
            finished += fin
            it_done += n
            it_total += total
            units_done += n * t.weight + (t.start if started else 0.0)
            units_total += total * t.weight + t.start
        return {"runs_done": finished, "runs": len(tracked), "iterations": it_done, "iterations_total": it_total,
                "units": units_done + credited, "units_total": units_total + work}

    # the bar
    def refresh(self) -> None:
        if self._bar is None:
            return
        s = self.state()
        self._bar.total = max(round(s["units_total"]), round(s["units"]), 1)
        self._bar.n = round(s["units"])
        runs = f"runs trained {s['runs_done']}/{s['runs']}" if s["runs"] else ""
        self._bar.set_postfix_str(" · ".join(filter(None, [self._text, runs])), refresh=False)
        self._bar.refresh()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def __enter__(self):
        from tqdm import tqdm

        if not self.disable:
            # the ETA is the average rate over the elapsed time (n is set, never updated: no smoothing)
            self._bar = tqdm(total=1, desc=self.desc, unit="it", dynamic_ncols=True)
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
        if self._bar is not None:
            self.refresh()
            self._bar.close()
        return False


__all__ = ["WORK", "Tracked", "ReportProgress", "iterations_done"]

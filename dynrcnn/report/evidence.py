"""The report's evidence, built once: the runs, their configuration groups, the benchmarks they
were evaluated on, each run's bootstrap AP samples, every comparison made of them and the claims.

Every report function takes ``runs`` (a list of :class:`~dynrcnn.rundir.runs.Run`) or an
:class:`Evidence`, which is a sequence of runs as well: given a list, a function builds the
evidence it needs (:func:`evidence_of`); given an :class:`Evidence`, it reuses what the object
already computed. The pipeline builds one for ``index.html`` and README's block, the results
notebook one for all its sections; nothing is kept at module level, so a new evidence object
always reads the runs as they are on disk now (the bootstrap samples themselves are cached on
disk, :mod:`.intervals`).
"""

from __future__ import annotations

from collections.abc import Sequence

from dynrcnn.reference import BASELINE_RPN_NMS
from dynrcnn.report.intervals import compare, extra_datasets, run_samples
from dynrcnn.rundir.run_summary import rpn_nms
from dynrcnn.evaluation.seed_intervals import SeedDelta
from dynrcnn.evaluation.stats import DEFAULT_BOOT, APSamples


def group_runs(runs) -> dict[tuple[str, float], list]:
    """Runs with an eval.json grouped by (method, RPN NMS threshold)."""
    groups: dict[tuple[str, float], list] = {}
    for r in runs:
        if not r.eval:
            continue
        groups.setdefault((r.config.method, rpn_nms(r)), []).append(r)
    return groups


def main_key(groups, method: str):
    """The (method, nms) group that stands for ``method``: RPN NMS 0.7 (the reference
    baselines' value) when present, else the first."""
    keys = sorted((k for k in groups if k[0] == method), key=lambda k: (k[1] != BASELINE_RPN_NMS, k[1]))
    return keys[0] if keys else None


class Evidence(Sequence):
    """A report's runs and what is computed from them, each once (see the module docstring).
    ``groups``: evaluated runs by (method, RPN NMS); ``datasets``: ``None`` (each run's own
    split) then every other benchmark they were evaluated on."""

    def __init__(self, runs, n_boot: int = DEFAULT_BOOT):
        self.runs = list(runs)
        self.n_boot = n_boot
        self.groups = group_runs(self.runs)
        self.datasets: list[str | None] = [None, *extra_datasets(self.runs)]
        self._samples: dict[tuple[str, str | None], APSamples | None] = {}
        self._deltas: dict[tuple, SeedDelta | None] = {}
        self._derived: dict[str, object] = {}

    # a sequence of runs
    def __getitem__(self, i):
        return self.runs[i]

    def __len__(self) -> int:
        return len(self.runs)

    def samples(self, run, dataset: str | None = None) -> APSamples | None:
        """``run``'s bootstrap AP samples on ``dataset`` (read or computed once)."""
        k = (str(run.path), dataset)
        if k not in self._samples:
            self._samples[k] = run_samples(run, dataset, self.n_boot)
        return self._samples[k]

    def compare(self, runs_a, runs_b, dataset: str | None = None) -> SeedDelta | None:
        """``B - A`` with its interval (:func:`~dynrcnn.report.intervals.compare`), made once."""
        k = (tuple(str(r.path) for r in runs_a), tuple(str(r.path) for r in runs_b), dataset)
        if k not in self._deltas:
            self._deltas[k] = compare(runs_a, runs_b, dataset, n_boot=self.n_boot, samples=self.samples)
        return self._deltas[k]

    def once(self, key: str, compute):
        """``compute()`` the first time ``key`` is asked for, the same value after (what the
        modules above derive from the evidence, e.g. the claims: :func:`~.claims.claims`)."""
        if key not in self._derived:
            self._derived[key] = compute()
        return self._derived[key]


def evidence_of(runs) -> Evidence:
    """``runs`` itself when it is an :class:`Evidence`, else the evidence of that list."""
    return runs if isinstance(runs, Evidence) else Evidence(runs)


__all__ = ["Evidence", "evidence_of", "group_runs", "main_key"]

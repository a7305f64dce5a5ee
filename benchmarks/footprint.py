"""What the report costs a newcomer in disk and test time, measured rather than typed.

Runs the test suite (README's ``make test`` command, ``python -m pytest -q``) with its temporary
files in a fresh folder (``TMPDIR``), samples that folder's size every second, and reports the
suite's wall time, its outcome and the folder's peak size: pytest keeps a test's ``tmp_path``
only when the test fails (``tmp_path_retention_policy`` in pyproject.toml), so the peak, not the
sum, is what the temp disk must hold. It also sizes what a checkout keeps: the two virtual
environments, and after ``make report`` its runs and data::

    .venv/bin/python benchmarks/footprint.py --readme README.md

writes README's ``FOOTPRINT`` block. ``--skip-tests`` only sizes the folders and prints them
(it cannot write the block, which would lose the test figures).
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from dynrcnn.report.profiles import default_run_dir, get_profile, repo_path  # noqa: E402

MAIN = "mini"  # make report's profile
RUNS = default_run_dir(MAIN, "baseline").parent  # where make report keeps its runs
DATA = repo_path(get_profile(MAIN).data_root).parent  # its benchmarks and pretrained backbone
BLOCK = "FOOTPRINT"  # README's marked block this script writes
GIB = 2 ** 30  # sizes in GiB, as `du -h` prints them
# pytest's own summary line, e.g. "624 passed, 2 skipped in 457.12s (0:07:37)"
_SUMMARY = re.compile(r"^=*\s*(?P<counts>\d+ \w+(?:, \d+ \w+)*) in [\d.]+s")


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path``, like ``du --apparent-size``: links not followed,
    a file with several hard links counted once (a run's ``last.pth`` is a second name of its
    last checkpoint); 0 when it does not exist. A file removed while walking is skipped."""
    total, seen = 0, set()
    for root, _, files in os.walk(path, followlinks=False):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


class PeakSampler:
    """Samples ``tree_bytes(path)`` every ``interval`` s in a thread; ``peak`` is the largest seen."""

    def __init__(self, path: Path, interval: float = 1.0):
        self.path, self.interval, self.peak = path, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, tree_bytes(self.path))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_bytes(self.path))


def run_suite(python: str, scratch: Path, extra: list[str]) -> dict:
    """Run ``python -m pytest -q`` in the repository with ``TMPDIR`` = a new folder under
    ``scratch``: its wall time (s), pytest's summary counts, its exit code and the folder's
    peak and final sizes (bytes)."""
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="footprint-", dir=scratch) as tmp:
        env = {**os.environ, "TMPDIR": tmp, "MPLBACKEND": "Agg"}
        start = time.perf_counter()
        with PeakSampler(Path(tmp)) as sampler:
            proc = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra], cwd=REPO,
                                  env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        left = tree_bytes(Path(tmp))
    counts = next((m["counts"] for line in reversed(proc.stdout.splitlines()) if (m := _SUMMARY.match(line))), None)
    if proc.returncode != 0 or counts is None:
        sys.stdout.write(proc.stdout[-4000:])
        sys.stderr.write(proc.stderr[-4000:])
    return {"seconds": seconds, "counts": counts, "returncode": proc.returncode, "peak": sampler.peak, "left": left}


def gb(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def folder_sizes(runs: Path, data: Path) -> dict[str, int | None]:
    """Sizes (bytes) of what a checkout keeps; None for a folder that is not there."""
    sizes = {".venv": REPO / ".venv", ".venv-mmdet": REPO / ".venv-mmdet", "runs": runs, "data": data}
    return {k: (tree_bytes(p) if p.exists() else None) for k, p in sizes.items()}


def block_text(sizes: dict, suite: dict | None, machine: str) -> str:
    """README's FOOTPRINT block: one paragraph, every figure from this measurement (the runs and
    data are named as ``make report`` names them, wherever the measured copies were)."""
    def size(key, label):
        return f"{label} {gb(sizes[key])}" if sizes[key] is not None else f"{label} not measured (absent)"

    kept = [s for s in (sizes["runs"], sizes["data"]) if s is not None]
    total = sum(s for s in (sizes[".venv"], sizes[".venv-mmdet"], *kept) if s is not None)
    parts = [f"**Disk and test time** (written by `benchmarks/footprint.py`; {machine}): "
             f"{size('.venv', '`.venv`')} (mostly PyTorch's CUDA libraries), {size('.venv-mmdet', '`.venv-mmdet`')}; "
             f"`make report` keeps {size('runs', f'`{RUNS.relative_to(REPO)}`')}, {size('data', f'`{DATA.relative_to(REPO)}/`')}: {gb(total)} in all."]
    if suite is not None:
        parts.append(f"`make test`: {suite['counts']} in {suite['seconds'] / 60:.1f} min; its temporary files peak at "
                     f"{gb(suite['peak'])} in the temp folder (`TMPDIR`), and {gb(suite['left'])} is left once it passes.")
    return " ".join(parts)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--python", default=sys.executable, help="the interpreter that runs the suite (default this one)")
    p.add_argument("--scratch", default=tempfile.gettempdir(), metavar="DIR",
                   help="where the suite's temp folder is made (default the system temp folder)")
    p.add_argument("--runs", default=str(RUNS), metavar="DIR", help=f"make report's runs (default {RUNS})")
    p.add_argument("--data", default=str(DATA), metavar="DIR", help=f"make report's data (default {DATA})")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--skip-tests", action="store_true", help="only size the folders and print them")
    out.add_argument("--readme", default=None, metavar="FILE", help=f"write the result into this file's {BLOCK} block")
    p.add_argument("pytest_args", nargs="*", help="passed on to pytest (after --), e.g. a test file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from dynrcnn.report.text import write_page_block
    from dynrcnn.rundir.environment import machine_line

    machine = machine_line(os.getloadavg()[0])
    print(f"machine: {machine}")
    sizes = folder_sizes(Path(args.runs), Path(args.data))
    suite = None if args.skip_tests else run_suite(args.python, Path(args.scratch), args.pytest_args)
    text = block_text(sizes, suite, machine)
    print(text)
    if suite is not None and suite["returncode"] != 0:
        print(f"the suite failed (exit {suite['returncode']}): nothing written", file=sys.stderr)
        return 1
    return write_page_block(args.readme, BLOCK, text) if args.readme else 0


if __name__ == "__main__":
    raise SystemExit(main())

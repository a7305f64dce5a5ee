"""Reading run directories (what :mod:`dynrcnn.engine` and :mod:`dynrcnn.evaluation` write).

``load_run(dir)`` returns a :class:`Run` with the config, environment, logs as pandas
DataFrames and the evaluation; ``find_runs(root)`` finds every run under a folder;
``runs_table(runs)`` is the one-line-per-run summary that ``dynrcnn runs DIR`` prints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSON-lines file ([] if missing; a torn last line is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


@dataclass
class Run:
    """One run directory, read."""

    path: Path
    config: dict
    env: dict = field(default_factory=dict)
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    dynamic: pd.DataFrame = field(default_factory=pd.DataFrame)
    stats: pd.DataFrame | None = None
    proposal_ious: list[dict] = field(default_factory=list)
    eval: dict | None = None
    done: dict | None = None

    @property
    def method(self) -> str:
        return self.config.get("method", "?")

    @property
    def preset(self) -> str:
        return self.config.get("preset", "?")

    @property
    def seed(self) -> int:
        return self.config.get("seed", 0)

    @property
    def convention(self) -> str:
        return self.config.get("dynamic", {}).get("convention", "?")

    @property
    def iterations(self) -> int:
        if self.done:
            return int(self.done.get("iterations", 0))
        if len(self.metrics):
            return int(self.metrics["iteration"].max())
        return 0

    @property
    def finished(self) -> bool:
        return self.done is not None

    @property
    def label(self) -> str:
        """Short description for legends and figure captions."""
        return (f"{self.method} ({self.preset}, seed {self.seed}, {self.iterations} it, "
                f"{self.env.get('device_name', self.env.get('device', '?'))})")


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory (it must hold ``config.json``)."""
    path = Path(run_dir)
    config = _read_json(path / "config.json")
    if config is None:
        from dynrcnn.errors import DynrcnnError

        raise DynrcnnError(f"{path} is not a run directory (no readable config.json)")
    stats = read_jsonl(path / "stats.jsonl")
    return Run(
        path=path,
        config=config,
        env=_read_json(path / "env.json") or {},
        metrics=pd.DataFrame(read_jsonl(path / "metrics.jsonl")),
        dynamic=pd.DataFrame(read_jsonl(path / "dynamic.jsonl")),
        stats=pd.DataFrame(stats) if stats else None,
        proposal_ious=read_jsonl(path / "proposal_ious.jsonl"),
        eval=_read_json(path / "eval.json"),
        done=_read_json(path / "train_done.json"),
    )


def find_runs(root: str | Path) -> list[Run]:
    """Every run directory (a folder with ``config.json``) under ``root``, sorted by path."""
    root = Path(root)
    dirs = sorted({p.parent for p in root.rglob("config.json")})
    return [load_run(d) for d in dirs]


def runs_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: method, preset, seed, iterations, AP, AP50, AP75, AP90, wall time."""
    rows = []
    for r in runs:
        ev = r.eval or {}
        done = r.done or {}
        wall = done.get("wall_time_sec")
        rows.append({
            "run": str(r.path),
            "method": r.method,
            "preset": r.preset,
            "convention": r.convention,
            "seed": r.seed,
            "iterations": r.iterations,
            "finished": r.finished,
            "AP": ev.get("AP"),
            "AP50": ev.get("AP50"),
            "AP75": ev.get("AP75"),
            "AP90": ev.get("AP90"),
            "wall_min": None if wall is None else wall / 60.0,
            "img_per_s": done.get("images_per_sec"),
        })
    columns = ["run", "method", "preset", "convention", "seed", "iterations", "finished", "AP", "AP50",
               "AP75", "AP90", "wall_min", "img_per_s"]
    table = pd.DataFrame(rows, columns=columns)
    for c in ("AP", "AP50", "AP75", "AP90", "wall_min", "img_per_s"):
        table[c] = pd.to_numeric(table[c], errors="coerce")
    return table


def format_table(table: pd.DataFrame) -> str:
    """The table as text (``dynrcnn runs``)."""
    if table.empty:
        return "(no runs)"
    return table.to_string(index=False, float_format=lambda v: f"{v:.2f}", na_rep="-")


__all__ = ["Run", "read_jsonl", "load_run", "find_runs", "runs_table", "format_table"]

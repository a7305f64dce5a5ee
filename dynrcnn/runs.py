"""The run directory: every file name, the atomic writers, the JSON-lines loggers, reading a
run back (:class:`Run`) and the reuse rules. No other module spells a file name of a run.

A run directory holds (see the README's "Run directory" section)::

    config.json          resolved config (+ images_per_update, world_size)  engine
    env.json             versions, device, command                           engine
    metrics.jsonl        losses, lr, threshold/beta, speed every log_period  engine
    dynamic.jsonl        every update of the IoU threshold and beta           engine
    stats.jsonl          per-iteration statistics (log_stats=true)           engine
    proposal_ious.jsonl  proposal IoU histograms (log_stats=true)            engine
    checkpoints/         last.pth and iter_XXXXXXX.pth                       checkpoint
    tensorboard/         optional TensorBoard events                          engine
    train_done.json      written when training finished                       engine
    detections.json      COCO results of the evaluated checkpoint            evaluation
    eval.json            COCO metrics (+ data_root, split, annotation_sha256) evaluation
    eval-<name>.json     the same on another dataset (``eval --data-root``)  evaluation
    detections-<name>.json                                                    evaluation

An evaluation on data other than the run's own (``config.json``'s ``data_root``) never replaces
``eval.json``: it is tagged with the data folder's name (:func:`eval_tag`), and every eval file
records what it was evaluated on (:func:`data_record`).

``load_run(dir)`` returns a :class:`Run` with the config, environment, logs as pandas
DataFrames and the evaluation; ``find_runs(root)`` finds every run under a folder;
``runs_table(runs)`` is the one-line-per-run summary that ``dynrcnn runs DIR`` prints.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dynrcnn.errors import DynrcnnError

CONFIG = "config.json"
ENV = "env.json"
METRICS = "metrics.jsonl"
DYNAMIC = "dynamic.jsonl"
STATS = "stats.jsonl"
PROPOSAL_IOUS = "proposal_ious.jsonl"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.pth"
TENSORBOARD = "tensorboard"
TRAIN_DONE = "train_done.json"
DETECTIONS = "detections.json"
EVAL = "eval.json"
#: the key of config.json that records the training data (:func:`data_record`)
DATA_RECORD = "data"

LOG_FILES = (METRICS, DYNAMIC, STATS, PROPOSAL_IOUS)
RESULT_FILES = (TRAIN_DONE, EVAL, DETECTIONS)  # stale once a run trains further
#: the loss columns of metrics.jsonl (torchvision's Faster R-CNN loss names)
LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
_PERIODIC = re.compile(r"iter_(\d+)\.pth")


# --------------------------------------------------------------------------------------
# paths


def checkpoint_dir(run_dir) -> Path:
    return Path(run_dir) / CHECKPOINTS


def last_checkpoint(run_dir) -> Path:
    """``RUN_DIR/checkpoints/last.pth`` (what ``evaluate`` and a resume read first)."""
    return checkpoint_dir(run_dir) / LAST_CHECKPOINT


def periodic_checkpoint(ckpt_dir, iteration: int) -> Path:
    return Path(ckpt_dir) / f"iter_{iteration:07d}.pth"


def periodic_checkpoints(ckpt_dir) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of every ``iter_XXXXXXX.pth`` in ``ckpt_dir``, oldest first."""
    out = []
    for p in Path(ckpt_dir).glob("iter_*.pth"):
        m = _PERIODIC.fullmatch(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def has_checkpoints(run_dir) -> bool:
    ckpt = checkpoint_dir(run_dir)
    return ckpt.is_dir() and (last_checkpoint(run_dir).exists() or bool(periodic_checkpoints(ckpt)))


def tensorboard_dir(run_dir) -> Path:
    return Path(run_dir) / TENSORBOARD


def _tagged(name: str, tag: str | None) -> str:
    """``eval.json`` -> ``eval-<tag>.json`` (``tag=None``: the name itself)."""
    if tag is None:
        return name
    stem, ext = os.path.splitext(name)
    return f"{stem}-{tag}{ext}"


def eval_file(run_dir, name: str | None = None) -> Path:
    """``RUN_DIR/eval.json`` (the run's own data) or ``RUN_DIR/eval-<name>.json`` (other data)."""
    return Path(run_dir) / _tagged(EVAL, name)


def detections_file(run_dir, name: str | None = None) -> Path:
    """``RUN_DIR/detections.json`` or ``RUN_DIR/detections-<name>.json`` (see :func:`eval_file`)."""
    return Path(run_dir) / _tagged(DETECTIONS, name)


def sanitise_tag(text: str) -> str:
    """A file-name-safe tag: letters, digits, ``.``, ``_``, ``-`` (others become ``_``)."""
    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._-")
    return tag or "data"


def same_path(a, b) -> bool:
    """Whether two paths name the same place (``~`` expanded, resolved)."""
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def eval_tag(run_dir, data_root) -> str | None:
    """``None`` when ``data_root`` is the run's own data (``config.json``), else the data
    folder's name, sanitised: the tag of ``eval-<name>.json``."""
    if data_root is None:
        return None
    own = (read_json(Path(run_dir) / CONFIG) or {}).get("data_root")
    if own and same_path(own, data_root):
        return None
    return sanitise_tag(Path(data_root).expanduser().resolve().name)


def data_record(dataset) -> dict:
    """What a run records of the data it read (a :class:`~dynrcnn.data.CocoDetection`):
    ``data_root`` (resolved), ``split`` and the SHA-256 of the annotation file."""
    from dynrcnn.weights import file_sha256

    return {"data_root": str(Path(dataset.root).expanduser().resolve()), "split": dataset.split,
            "annotation_sha256": file_sha256(dataset.annotation_file)}


# --------------------------------------------------------------------------------------
# writing (atomic: a reader sees the old or the new file, never half of one)


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees either the old or the new file; a
    failed write leaves no temporary file behind (and :class:`DynrcnnError` says why)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise DynrcnnError(f"cannot write {path.name} ({path}): {e.strerror or e}; "
                               "free disk space or fix the folder's permissions, then resume") from e
        raise


def write_json(path: Path, obj, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON, atomically (numpy scalars and paths converted)."""
    text = json.dumps(obj, indent=indent, default=_json_default) + ("\n" if indent is not None else "")
    atomic_write_bytes(Path(path), text.encode())


def write_config(run_dir, cfg, world_size: int, data: dict | None = None) -> None:
    """``config.json``: the resolved config plus the engine's extras (see ``config_record``);
    ``data``: where the training data came from (:func:`data_record` of the train split)."""
    from dynrcnn.config import config_record

    record = config_record(cfg, world_size)
    if data is not None:
        record[DATA_RECORD] = data
    write_json(Path(run_dir) / CONFIG, record)


def write_env(run_dir, env: dict) -> None:
    write_json(Path(run_dir) / ENV, env)


def write_train_done(run_dir, done: dict) -> None:
    write_json(Path(run_dir) / TRAIN_DONE, done)


def write_detections(run_dir, detections: list[dict], name: str | None = None) -> Path:
    path = detections_file(run_dir, name)
    write_json(path, detections, indent=None)
    return path


def write_eval(run_dir, metrics: dict, name: str | None = None) -> Path:
    path = eval_file(run_dir, name)
    write_json(path, metrics)
    return path


def check_eval_target(run_dir, name: str | None, data: dict) -> None:
    """Refuse to replace ``eval-<name>.json`` that holds results on other data (two data
    folders with the same name)."""
    if name is None:
        return
    path = eval_file(run_dir, name)
    held = (read_json(path) or {}).get("data_root")
    if held and not same_path(held, data["data_root"]):
        raise DynrcnnError(f"{path.name} already holds results on {held}, not {data['data_root']} ({path}); "
                           "pass --name to store this evaluation under another name")


def truncate_jsonl(path: Path, iteration: int) -> None:
    """Keep only the lines of a JSON-lines log whose ``iteration`` is <= ``iteration``
    (dropping a torn last line)."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(rec.get("iteration", 0)) <= iteration:
            kept.append(line)
    atomic_write_bytes(path, "".join(k + "\n" for k in kept).encode())


class JsonlWriter:
    """Append-only JSON-lines file (flushed after every record); ``path=None`` is a no-op
    (the writer of ranks other than 0)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._f = open(path, "a") if path is not None else None

    def write(self, record: dict) -> None:
        if self._f is not None:
            self._f.write(json.dumps(record, default=_json_default) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def prepare_logs(run_dir, resume_iteration: int | None, finished: bool) -> None:
    """Start the logs of a run: removed for a fresh run, cut back to ``resume_iteration`` on a
    resume (so a resumed run's logs equal an uninterrupted run's). Results of an earlier
    training (``train_done.json``, ``eval.json``, ``detections.json``) are removed unless the
    run is already ``finished`` (resuming a finished run keeps them)."""
    run_dir = Path(run_dir)
    for name in LOG_FILES:
        if resume_iteration is None:
            (run_dir / name).unlink(missing_ok=True)
        else:
            truncate_jsonl(run_dir / name, resume_iteration)
    if not finished:
        for name in RESULT_FILES:
            (run_dir / name).unlink(missing_ok=True)


def open_loggers(run_dir, log_stats: bool) -> dict[str, JsonlWriter]:
    """The JSON-lines loggers of a training run: ``metrics``, ``dynamic`` and, with
    ``log_stats``, ``stats`` and ``proposal_ious``."""
    run_dir = Path(run_dir)
    names = {"metrics": METRICS, "dynamic": DYNAMIC}
    if log_stats:
        names.update(stats=STATS, proposal_ious=PROPOSAL_IOUS)
    return {key: JsonlWriter(run_dir / name) for key, name in names.items()}


# --------------------------------------------------------------------------------------
# reading


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


def read_json(path: Path) -> dict | None:
    """A JSON file's content, or ``None`` when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def read_config(run_dir):
    """The :class:`~dynrcnn.config.Config` of a run (``config.json``, extras dropped)."""
    from dynrcnn.config import config_from_dict

    d = read_json(Path(run_dir) / CONFIG)
    if d is None:
        raise DynrcnnError(f"{run_dir} is not a run directory (no readable {CONFIG})")
    return config_from_dict(d)


def read_detections(run_dir, name: str | None = None) -> list[dict]:
    return json.loads(detections_file(run_dir, name).read_text())


def is_run_dir(path) -> bool:
    return (Path(path) / CONFIG).is_file()


def is_complete(run_dir) -> bool:
    """Training finished and the run was evaluated."""
    return (Path(run_dir) / TRAIN_DONE).is_file() and (Path(run_dir) / EVAL).is_file()


def is_finished(run_dir) -> bool:
    return (Path(run_dir) / TRAIN_DONE).exists()


def is_evaluated(run_dir) -> bool:
    return (Path(run_dir) / EVAL).exists()


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
        """Iterations trained: from ``train_done.json``, else the last logged; 0 if none."""
        if self.done and self.done.get("iterations") is not None:
            return int(self.done["iterations"])
        if self.metrics is not None and len(self.metrics) and "iteration" in self.metrics:
            return int(self.metrics["iteration"].max())
        return 0

    @property
    def finished(self) -> bool:
        return self.done is not None

    def eval_on(self, name: str | None) -> dict | None:
        """The evaluation tagged ``name`` (``eval-<name>.json``; ``None``: the run's own
        ``eval.json``), or ``None`` when there is none."""
        return self.eval if name is None else read_json(eval_file(self.path, name))

    def detections_path(self, name: str | None = None) -> Path:
        """Path of the detections that go with :meth:`eval_on` ``(name)``."""
        return detections_file(self.path, name)

    @property
    def eval_names(self) -> list[str]:
        """Tags of the evaluations on other data (``eval-<name>.json``), sorted."""
        prefix, suffix = _tagged(EVAL, "|").split("|")
        return sorted(p.name[len(prefix):-len(suffix)] for p in Path(self.path).glob(f"{prefix}*{suffix}"))

    @property
    def label(self) -> str:
        """Short description for legends and figure captions."""
        return (f"{self.method} ({self.preset}, seed {self.seed}, {self.iterations} it, "
                f"{self.env.get('device_name', self.env.get('device', '?'))})")


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory (it must hold ``config.json``)."""
    path = Path(run_dir)
    config = read_json(path / CONFIG)
    if config is None:
        raise DynrcnnError(f"{path} is not a run directory (no readable {CONFIG})")
    stats = read_jsonl(path / STATS)
    return Run(
        path=path,
        config=config,
        env=read_json(path / ENV) or {},
        metrics=pd.DataFrame(read_jsonl(path / METRICS)),
        dynamic=pd.DataFrame(read_jsonl(path / DYNAMIC)),
        stats=pd.DataFrame(stats) if stats else None,
        proposal_ious=read_jsonl(path / PROPOSAL_IOUS),
        eval=read_json(path / EVAL),
        done=read_json(path / TRAIN_DONE),
    )


def find_runs(root: str | Path) -> list[Run]:
    """Every run directory (a folder with ``config.json``) under ``root``, sorted by path
    ([] when ``root`` is not a folder); one whose ``config.json`` is unreadable is skipped
    with a warning."""
    root = Path(root)
    if not root.is_dir():
        return []
    dirs = sorted({p.parent for p in root.rglob(CONFIG)})
    found = []
    for d in dirs:
        try:
            found.append(load_run(d))
        except DynrcnnError as e:  # one torn config.json must not hide the other runs
            import sys

            print(f"warning: skipped {d}: {e}", file=sys.stderr)
    return found


# --------------------------------------------------------------------------------------
# describing a run (captions, tables)


def run_name(run) -> str:
    """The run's directory name (the profile's run id, e.g. ``dynamic`` or ``baseline_nms085``)."""
    return Path(run.path).name


def run_iterations(run) -> int | None:
    """Iterations trained, or the configured ``max_iter`` when nothing was logged."""
    return run.iterations or run.config.get("max_iter")


def run_device(run) -> str:
    env = run.env or {}
    dev = env.get("device") or "?"
    name = env.get("device_name")
    if name and str(dev).startswith("cuda"):
        return f"{dev} ({name})"
    return str(dev)


def rpn_nms(run) -> float | None:
    return (run.config.get("model") or {}).get("rpn_nms_thresh")


def is_miniature(preset: str | None) -> bool:
    """Whether a preset trains on the miniature benchmark (anything not ``coco_*``)."""
    return not str(preset or "").startswith("coco")


def scale_label(preset: str | None) -> str:
    return "miniature benchmark (not COCO)" if is_miniature(preset) else "COCO"


def threshold_at(run, iteration: int) -> tuple[float, float]:
    """``(iou_threshold, beta)`` in effect during ``iteration`` (last update before it)."""
    d = run.dynamic
    if d is None or not len(d):
        return float("nan"), float("nan")
    rows = d[d["iteration"] < iteration]
    row = rows.iloc[-1] if len(rows) else d.iloc[0]
    return float(row["iou_threshold"]), float(row["beta"])


def runs_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: method, preset, seed, iterations, AP, AP50, AP75, AP90, wall time."""
    rows = []
    for r in runs:
        ev = r.eval or {}
        done = r.done or {}
        wall = done.get("wall_time_sec")
        rows.append({
            "run": str(r.path), "method": r.method, "preset": r.preset, "convention": r.convention,
            "seed": r.seed, "iterations": r.iterations, "finished": r.finished,
            **{k: ev.get(k) for k in ("AP", "AP50", "AP75", "AP90")},
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


# --------------------------------------------------------------------------------------
# overwrite rules and the lock: no silent overwrite, no concurrent writers

LOCK = "dynrcnn.lock"
#: settings that may change when a run is resumed (they do not change what is trained); every
#: other setting, and the training data (``config.json``'s ``data``), must stay as recorded
MAY_CHANGE_ON_RESUME = ("num_workers", "log_period", "checkpoint_period", "keep_checkpoints", "log_stats",
                        "eval_at_end", "eval_batch_size", "tf32")
_TAGGED = re.compile(r"(eval|detections)-.+\.json")


def artefacts(run_dir) -> list[str]:
    """Names of the run artefacts in ``run_dir`` (every file this module names, tagged
    evaluations included; the lock excepted), sorted."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    known = {CONFIG, ENV, TRAIN_DONE, DETECTIONS, EVAL, CHECKPOINTS, TENSORBOARD, *LOG_FILES}
    return sorted(p.name for p in run_dir.iterdir() if p.name in known or _TAGGED.fullmatch(p.name))


def clear_run(run_dir) -> None:
    """Remove the run artefacts of ``run_dir`` (other files are left alone)."""
    import shutil

    for name in artefacts(run_dir):
        path = Path(run_dir) / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def check_out_dir(run_dir, resume: bool, overwrite: bool) -> None:
    """Refuse an ``--out`` that is a file, a fresh start (without ``overwrite``) into a folder
    holding any run artefact, and a resume of a finished run that has no checkpoint left (a
    resume of a run that stopped before its first checkpoint starts it again)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise DynrcnnError(f"--out {run_dir} is a file, not a folder; choose another --out")
    if resume and overwrite:
        raise DynrcnnError("--resume continues a run and --overwrite deletes it; pass one of them")
    held = artefacts(run_dir)
    if overwrite or not held:
        return
    if not resume:
        raise DynrcnnError(f"{run_dir} already holds a run ({', '.join(held[:4])}); pass --resume to continue it, "
                           "--overwrite to delete it and train again, or choose another --out")
    if not has_checkpoints(run_dir) and (is_finished(run_dir) or is_evaluated(run_dir)):
        raise DynrcnnError(f"{run_dir} holds a finished run ({', '.join(held[:4])}) but no checkpoint to resume "
                           f"from ({CHECKPOINTS}/ is empty); pass --overwrite to train it again from scratch")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


class RunLock:
    """``RUN_DIR/dynrcnn.lock`` (holder's pid and host) for as long as one process writes the run.

    A second writer is refused with the holder's pid; a lock whose process is gone (same host)
    is stale and taken over. Re-entrant within a process (training evaluates under its own lock).
    """

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK
        self.owned = False

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunLock":
        import socket

        me = {"pid": os.getpid(), "host": socket.gethostname()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                    return self  # this process holds it already
                same_host = holder.get("host") == me["host"]
                if same_host and isinstance(holder.get("pid"), int) and _pid_alive(holder["pid"]):
                    raise DynrcnnError(f"{self.path.parent} is being written by process {holder['pid']} "
                                       f"({self.path}); wait for it to finish or stop it") from None
                if holder and not same_host:
                    raise DynrcnnError(f"{self.path.parent} is locked by process {holder.get('pid')} on "
                                       f"{holder.get('host')} ({self.path}); delete the lock file if that "
                                       "process no longer runs") from None
                import sys

                print(f"removing the stale lock {self.path} (process {holder.get('pid')} is gone)", file=sys.stderr)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.owned = True
            return self
        raise DynrcnnError(f"could not take the lock {self.path}; another process took it; try again")

    def release(self) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)
            self.owned = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# --------------------------------------------------------------------------------------
# the immutable training record and the reuse rules

_NOT_COMPARED = ("lr", "data_root", "num_workers")  # resolved by the engine / machine-specific


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_diff(recorded: dict, cfg, ignore=(), missing_differs: bool = True) -> list[str]:
    """``key: recorded -> wanted`` for every setting of ``cfg`` that differs from the
    ``recorded`` config (dotted keys; ``ignore``: top-level or dotted keys not compared; a key
    the record lacks counts as a difference only with ``missing_differs``)."""
    rec, wanted = _flat(recorded), _flat(json.loads(json.dumps(cfg.to_dict())))
    diffs = []
    for key, value in wanted.items():
        if key in ignore or key.split(".")[0] in ignore or (key not in rec and not missing_differs):
            continue
        if rec.get(key) != value:
            diffs.append(f"{key}: {rec.get(key)!r} -> {value!r}")
    return diffs


def check_resume(run_dir, cfg, data: dict) -> None:
    """Refuse to resume ``run_dir`` with settings or data other than those it recorded (the
    run's record stays true); :data:`MAY_CHANGE_ON_RESUME` may differ."""
    recorded = read_json(Path(run_dir) / CONFIG)
    if recorded is None:
        return
    diffs = config_diff(recorded, cfg, ignore=MAY_CHANGE_ON_RESUME + ("data_root",), missing_differs=False)
    held = recorded.get(DATA_RECORD) or {"data_root": recorded.get("data_root")}
    if held.get("data_root") and not same_path(held["data_root"], data["data_root"]):
        diffs.append(f"data_root: {held['data_root']!r} -> {data['data_root']!r}")
    if held.get("annotation_sha256") not in (None, data["annotation_sha256"]):
        diffs.append(f"{DATA_RECORD}.annotation_sha256: the training annotation file changed since the run started")
    if diffs:
        raise DynrcnnError(f"--resume would change what {run_dir} was trained with ({'; '.join(diffs)}); resume "
                           f"with the settings in {Path(run_dir) / CONFIG}, or train into a new --out "
                           f"(only {', '.join(MAY_CHANGE_ON_RESUME)} may change)")


def reusable(run_dir, cfg) -> tuple[bool, str]:
    """Whether ``run_dir`` holds a complete run (train_done.json + eval.json) of ``cfg``.

    The recorded config must equal ``cfg`` (``lr``, which the engine resolves, ``data_root``
    and ``num_workers`` excepted); the second element says why or why not.
    """
    run_dir = Path(run_dir)
    if not is_complete(run_dir):
        return False, f"{run_dir} is not complete (no {TRAIN_DONE}/{EVAL})"
    diffs = config_diff(read_json(run_dir / CONFIG) or {}, cfg, ignore=_NOT_COMPARED)
    if diffs:
        return False, f"{run_dir} was trained with another config ({'; '.join(diffs[:5])})"
    return True, f"reusing the complete run {run_dir} (same config; pass force=True to retrain)"


def train_action(run_dir, cfg, force: bool = False) -> tuple[str, str]:
    """What the train notebook does with ``run_dir``: ``reuse`` a complete run of the same
    config, ``resume`` an interrupted one (same config, ``checkpoints/last.pth`` present) or
    ``train`` from scratch; the second element says why."""
    run_dir = Path(run_dir)
    if force:
        return "train", f"force=True: training {run_dir} from scratch"
    ok, why = reusable(run_dir, cfg)
    if ok:
        return "reuse", why
    if last_checkpoint(run_dir).is_file() and is_run_dir(run_dir) and "another config" not in why:
        return "resume", f"resuming the interrupted run {run_dir} from {CHECKPOINTS}/{LAST_CHECKPOINT}"
    return "train", why + ": training from scratch"


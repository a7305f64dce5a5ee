"""The run directory: every file name, the atomic writers, the JSON-lines loggers, reading a
run back (:class:`Run`) and which files belong to a run (:func:`artefacts`). No other module
spells a file name of a run; the rules that guard a run directory (overwrite, lock, resume,
reuse, data provenance) are in :mod:`dynrcnn.rundir.integrity`, the captions and the runs table in
:mod:`dynrcnn.rundir.run_summary`.

A run directory holds (see the README's "Run directory" section)::

    config.json          resolved config (+ images_per_update, world_size)  engine
    env.json             versions, device, numeric path, command; one entry   engine
                         per resume (:mod:`dynrcnn.rundir.history`)
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
``eval.json``: it is tagged with the data folder's name (:func:`~dynrcnn.rundir.provenance.eval_tag`),
and every eval file records what it was evaluated on (:func:`~dynrcnn.rundir.provenance.data_record`).

``load_run(dir)`` returns a :class:`Run` with the config, environment, logs as pandas
DataFrames and the evaluation; ``find_runs(root)`` finds every run under a folder.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dynrcnn.config import Config, config_from_dict
from dynrcnn.errors import ConfigError, DynrcnnError
from dynrcnn.io import write_json, truncate_jsonl, JsonlWriter, read_jsonl, read_json

CONFIG = "config.json"
ENV = "env.json"
METRICS = "metrics.jsonl"
DYNAMIC = "dynamic.jsonl"
STATS = "stats.jsonl"
PROPOSAL_IOUS = "proposal_ious.jsonl"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.pth"
LAST_CHECKPOINT_PATH = f"{CHECKPOINTS}/{LAST_CHECKPOINT}"  # in a run directory, as messages name it
BEST_CHECKPOINT = "best.pth"  # the best model by cfg.best_metric when cfg.eval_period > 0
BEST_RECORD = "best.json"  # which iteration best.pth holds, and its metrics
TENSORBOARD = "tensorboard"
TRAIN_DONE = "train_done.json"
DETECTIONS = "detections.json"
EVAL = "eval.json"
PROVENANCE = "provenance.json"  # where a run converted from published weights came from (dynrcnn convert)
LOCK = "dynrcnn.lock"  # while one process writes the run (integrity.RunLock)
#: the key of config.json that records the training data (:func:`~dynrcnn.rundir.provenance.data_record`)
DATA_RECORD = "data"

LOG_FILES = (METRICS, DYNAMIC, STATS, PROPOSAL_IOUS)
RESULT_FILES = (TRAIN_DONE, EVAL, DETECTIONS)  # stale once a run trains further
#: the loss columns of metrics.jsonl (torchvision's Faster R-CNN loss names)
LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
# proposals labelled positive per image at the current threshold, before and after sampling, and
# the RPN proposals labelled positive (appended ground truth left out) per ground-truth object
# (attributes of DynamicRoIHeads after each training forward, averaged in metrics.jsonl; runs
# trained before the third key existed lack it)
POSITIVE_KEYS = ("positives_per_image", "sampled_positives_per_image", "rpn_positives_per_object")
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


# --------------------------------------------------------------------------------------
# writing (atomic: a reader sees the old or the new file, never half of one)


def write_config(run_dir, cfg, world_size: int, data: dict | None = None) -> None:
    """``config.json``: the resolved config plus the engine's extras (see ``config_record``);
    ``data``: where the training data came from (:func:`~dynrcnn.rundir.provenance.data_record` of the
    train split)."""
    from dynrcnn.config import config_record

    record = config_record(cfg, world_size)
    if data is not None:
        record[DATA_RECORD] = data
    write_json(Path(run_dir) / CONFIG, record)


def write_env(run_dir, env: dict) -> None:
    write_json(Path(run_dir) / ENV, env)


def write_train_done(run_dir, done: dict) -> None:
    write_json(Path(run_dir) / TRAIN_DONE, done)


def read_train_done(run_dir) -> dict | None:
    """``train_done.json`` of a finished run (``None``: not finished)."""
    return read_json(Path(run_dir) / TRAIN_DONE)


def detections_by_image(run_dir, name: str | None = None, min_score: float = 0.0) -> dict[int, list[dict]]:
    """A run's detections (``detections.json``, or those of evaluation ``name``) with score
    >= ``min_score``, by image id."""
    by_image: dict[int, list[dict]] = {}
    for d in read_detections(run_dir, name):
        if d["score"] >= min_score:
            by_image.setdefault(int(d["image_id"]), []).append(d)
    return by_image


def write_detections(run_dir, detections: list[dict], name: str | None = None) -> Path:
    path = detections_file(run_dir, name)
    write_json(path, detections, indent=None)
    return path


def write_eval(run_dir, metrics: dict, name: str | None = None) -> Path:
    path = eval_file(run_dir, name)
    write_json(path, metrics)
    return path


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


def read_config(run_dir):
    """The :class:`~dynrcnn.config.Config` of a run (``config.json``, extras dropped)."""
    from dynrcnn.config import config_from_dict

    d = read_json(Path(run_dir) / CONFIG)
    if d is None:
        raise DynrcnnError(f"{run_dir} is not a run directory (no readable {CONFIG})")
    return config_from_dict(d)


def class_names(run_dir) -> list[str] | None:
    """The class names a run's model predicts (label k -> names[k - 1]), from its ``config.json``
    data record; None when the run does not record them (runs older than that record)."""
    names = ((read_json(Path(run_dir) / CONFIG) or {}).get(DATA_RECORD) or {}).get("class_names")
    return [str(n) for n in names] if names else None


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
    config: Config  # config.json, typed (:func:`dynrcnn.config.config_from_dict`)
    record: dict = field(default_factory=dict)  # config.json as written, extras included (the data record, ...)
    env: dict = field(default_factory=dict)
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    dynamic: pd.DataFrame = field(default_factory=pd.DataFrame)
    stats: pd.DataFrame | None = None
    proposal_ious: list[dict] = field(default_factory=list)
    eval: dict | None = None
    done: dict | None = None

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def preset(self) -> str:
        return self.config.preset

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def convention(self) -> str:
        return self.config.dynamic.convention

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
        """Tags of the final model's evaluations on other data (``eval-<name>.json``), sorted;
        evaluations of intermediate checkpoints (``final_model: false``) are left out."""
        prefix, suffix = _tagged(EVAL, "|").split("|")
        names = sorted(p.name[len(prefix):-len(suffix)] for p in Path(self.path).glob(f"{prefix}*{suffix}"))
        return [n for n in names if (self.eval_on(n) or {}).get("final_model", True)]

    @property
    def label(self) -> str:
        """Short description for legends and figure captions."""
        return (f"{self.method} ({self.preset}, seed {self.seed}, {self.iterations} it, "
                f"{self.env.get('device_name', self.env.get('device', '?'))})")


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory (it must hold ``config.json``)."""
    path = Path(run_dir)
    record = read_json(path / CONFIG)
    if record is None:
        raise DynrcnnError(f"{path} is not a run directory (no readable {CONFIG})")
    try:
        config = config_from_dict(record)
    except ConfigError as e:
        raise DynrcnnError(f"{path / CONFIG}: {e} (written by another version of dynrcnn?)") from None
    stats = read_jsonl(path / STATS)
    return Run(
        path=path,
        config=config,
        record=record,
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
# what belongs to a run (the integrity rules in :mod:`dynrcnn.rundir.integrity` act on these)

_TAGGED = re.compile(r"(eval|detections)-.+\.json")


def artefacts(run_dir) -> list[str]:
    """Names of the run artefacts in ``run_dir`` (every file this module names, tagged
    evaluations included; the lock excepted), sorted."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    known = {CONFIG, ENV, TRAIN_DONE, DETECTIONS, EVAL, CHECKPOINTS, TENSORBOARD, *LOG_FILES}
    return sorted(p.name for p in run_dir.iterdir() if p.name in known or _TAGGED.fullmatch(p.name))

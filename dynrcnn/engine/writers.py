"""Event writers: where the :class:`~dynrcnn.engine.events.EventStorage`'s events go.

As detectron2's ``JSONWriter`` / ``TensorboardXWriter``: a writer reads events, never the trainer
or another hook. :class:`dynrcnn.engine.hooks.WriterHook` (rank 0) composes each ``log_period``'s
``metrics.jsonl`` record from the storage once (:func:`metrics_record`) and hands it, and the
records of every stream, to each writer:

* :class:`JsonlWriters`: the run's JSON-lines files (``metrics``, ``dynamic`` and, with
  ``log_stats``, ``stats`` and ``proposal_ious``; :func:`dynrcnn.rundir.runs.open_loggers`);
* :class:`TensorboardWriter`: ``train/*``, ``val/*`` and ``dynamic/*`` scalars (when the optional
  ``tensorboard`` extra is installed);
* :class:`WandbWriter`: Weights & Biases (``cfg.tracker = "wandb"``).

The JSON-lines files are a format the report and earlier runs depend on: :func:`metrics_record`
fixes the order and the keys of a ``metrics.jsonl`` line (:data:`METRICS_HEAD`, then any other
scalar put since the previous line, e.g. ``val_*``, then :data:`METRICS_TAIL`), and a stream's
records are written exactly as they were put.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from dynrcnn.config import Config
from dynrcnn.engine.events import EventStorage
from dynrcnn.errors import ConfigError
from dynrcnn.io import JsonlWriter
from dynrcnn.rundir import runs

# the keys of every metrics.jsonl line after "iteration", in order (null when not measured);
# other scalars put since the previous line (the validation's val_*, a user hook's) go between
METRICS_HEAD = ("lr", "loss", *runs.LOSS_KEYS, "iou_threshold", "beta", *runs.POSITIVE_KEYS)
METRICS_TAIL = ("sec_per_iter", "images_per_sec", "peak_memory_mb", "elapsed_sec")
TENSORBOARD_TRAIN = ("loss", "lr", *runs.LOSS_KEYS, "iou_threshold", "beta", "images_per_sec")


def metrics_record(storage: EventStorage, iteration: int, since: int) -> dict:
    """The ``metrics.jsonl`` record of ``iteration``: the scalars put after iteration ``since``
    (the previous record's), in the fixed order of the file."""
    new = storage.latest_since(since)
    record = {"iteration": iteration, **{k: new.get(k) for k in METRICS_HEAD}}
    record.update((k, v) for k, v in new.items() if k not in METRICS_HEAD and k not in METRICS_TAIL)
    record.update((k, new.get(k)) for k in METRICS_TAIL)
    return record


class EventWriter:
    """A destination of events: one ``metrics.jsonl`` record per log, the records of each stream."""

    def write_metrics(self, record: dict) -> None:
        pass

    def write_records(self, stream: str, records: list[dict]) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlWriters(EventWriter):
    """The run's JSON-lines files, one per stream (a stream without a file is not written)."""

    def __init__(self, files: dict[str, JsonlWriter]):
        self.files = files

    def write_metrics(self, record):
        self.files["metrics"].write(record)

    def write_records(self, stream, records):
        if stream in self.files:
            for record in records:
                self.files[stream].write(record)

    def close(self):
        for f in self.files.values():
            f.close()


class TensorboardWriter(EventWriter):
    """TensorBoard event files under the run's ``tensorboard/`` (events after ``start_iter`` are
    purged on resume, as the JSON-lines logs are cut)."""

    def __init__(self, summary_writer):
        self.tb = summary_writer

    @classmethod
    def open(cls, log_dir: Path, start_iter: int) -> "TensorboardWriter | None":
        """The writer, or None when ``tensorboard`` is not installed (an optional extra)."""
        try:
            from torch.utils.tensorboard import SummaryWriter

            return cls(SummaryWriter(str(log_dir), purge_step=start_iter or None))
        except Exception:
            return None

    def write_metrics(self, record):
        it = record["iteration"]
        for k, v in record.items():
            if v is None or k == "iteration" or k == "val_iteration":
                continue
            if k.startswith("val_"):
                self.tb.add_scalar(f"val/{k[4:]}", v, record.get("val_iteration", it))
            elif k in TENSORBOARD_TRAIN or k not in METRICS_HEAD + METRICS_TAIL:
                self.tb.add_scalar(f"train/{k}", v, it)

    def write_records(self, stream, records):
        if stream == "dynamic":
            for r in records:
                self.tb.add_scalar("dynamic/iou_threshold", r["iou_threshold"], r["iteration"])
                self.tb.add_scalar("dynamic/beta", r["beta"], r["iteration"])

    def close(self):
        self.tb.close()


class WandbWriter(EventWriter):
    """Weights & Biases: the run's config, then every ``metrics.jsonl`` record's numbers (losses,
    lr, threshold, beta, positives, ``val_*``) and every dynamic update. Offline
    (``WANDB_MODE=offline``, files under the run's ``wandb/``) when no API key is configured;
    ``wandb sync`` uploads them later. A resume continues the same W&B run."""

    def __init__(self, out: Path, cfg: Config):
        try:
            import wandb
        except ImportError:
            raise ConfigError("tracker=wandb needs the wandb package: pip install -e '.[wandb]'") from None
        mode = None if (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE")) else "offline"
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "dynrcnn"), name=out.name, dir=str(out),
                              config=cfg.to_dict(), resume="allow", id=wandb_id(out), mode=mode)

    def write_metrics(self, record):
        self.run.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "iteration"},
                     step=record["iteration"])

    def write_records(self, stream, records):
        if stream == "dynamic":
            for r in records:
                self.run.log({"dynamic/iou_threshold": r["iou_threshold"], "dynamic/beta": r["beta"]},
                             step=int(r["iteration"]))

    def close(self):
        self.run.finish()


def wandb_id(out: Path) -> str:
    """A stable W&B run id per run directory (a resume continues the same W&B run)."""
    return hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:16]


__all__ = ["METRICS_HEAD", "METRICS_TAIL", "metrics_record", "EventWriter", "JsonlWriters", "TensorboardWriter",
           "WandbWriter", "wandb_id"]

"""Training hooks: what happens around each iteration of :class:`dynrcnn.engine.trainer.Trainer`.

A hook overrides any of ``before_train``, ``after_step``, ``after_train`` (and ``flush``,
called before every checkpoint), as detectron2's ``HookBase`` and torchvision's reference
scripts do; ``t`` is the trainer, whose attributes (``cfg``, ``iteration``, ``loss_dict``,
``head``, ``writers``, ``tb``, ``bar``...) the hooks read. The stock hooks, in the order they
run after a step: the dynamic-update log, the statistics log (``log_stats``), the metrics log,
the progress bar and the checkpointer (:func:`default_hooks`).
"""

from __future__ import annotations

import math
import time

import torch

from dynrcnn.rundir import runs
from dynrcnn.config import REPORTED_METRICS, Config
from dynrcnn.errors import ConfigError
from dynrcnn.io import JsonlWriter, read_json, write_json

# ``t`` in every hook is a dynrcnn.engine.trainer.Trainer (not imported here: the engine imports this module)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    except (ImportError, OSError):
        return float("nan")


class HookBase:
    """A training hook: override any of the three; ``t`` is the :class:`~dynrcnn.engine.trainer.Trainer`."""

    def before_train(self, t: "Trainer") -> None:
        pass

    def after_step(self, t: "Trainer") -> None:
        pass

    def after_train(self, t: "Trainer") -> None:
        pass

    def flush(self, t: "Trainer") -> None:
        """Write what is buffered (called before every checkpoint)."""


class DynamicLogHook(HookBase):
    """``dynamic.jsonl``: the head's state at the start and every update (rank 0)."""

    def before_train(self, t):
        self.writer = t.writers.get("dynamic", JsonlWriter(None))
        t.head.update_callbacks.append(self.on_update)
        if t.ckpt is None:
            first = {"iteration": 0, "iou_threshold": float(t.head.iou_threshold), "beta": float(t.head.beta),
                     "num_iou_stats": 0, "num_beta_stats": 0}
            if not (t.head.use_dla or t.head.use_dsl):
                first["fixed"] = True
            self.writer.write(first)
        self.tb = t.tb

    def on_update(self, event) -> None:
        self.writer.write({"iteration": event.iteration, "iou_threshold": event.iou_threshold,
                           "beta": event.beta, "num_iou_stats": event.num_iou_stats,
                           "num_beta_stats": event.num_beta_stats,
                           "fg_fraction": None if math.isnan(event.fg_fraction) else event.fg_fraction})
        if self.tb is not None:
            self.tb.add_scalar("dynamic/iou_threshold", event.iou_threshold, event.iteration)
            self.tb.add_scalar("dynamic/beta", event.beta, event.iteration)

    def after_train(self, t):
        t.head.update_callbacks.remove(self.on_update)


class StatsHook(HookBase):
    """``stats.jsonl`` and ``proposal_ious.jsonl`` (``log_stats``, rank 0): the per-iteration
    statistics stay on the device until they are flushed at a log or checkpoint."""

    EDGES = torch.linspace(0, 1, 21)

    def __init__(self):
        self.pending_stats: list[tuple[int, torch.Tensor]] = []
        self.pending_hist: list[tuple[int, torch.Tensor]] = []

    def after_step(self, t):
        with torch.no_grad():
            s = t.head.last_stats or {}
            zero = torch.zeros((), device=t.dev)
            packed = torch.stack([s.get("iou", zero).float(), s.get("iou_valid", zero).float(),
                                  s.get("error", zero).float(), s.get("error_valid", zero).float()])
            self.pending_stats.append((t.iteration, packed))
            if t.iteration % t.cfg.log_period == 0 and t.head.last_proposal_ious is not None:
                hist = torch.histc(t.head.last_proposal_ious.float(), bins=20, min=0, max=1)
                self.pending_hist.append((t.iteration, hist))

    def flush(self, t):
        for it, vals in self.pending_stats:
            v = vals.tolist()
            t.writers["stats"].write({"iteration": it, "iou_stat": v[0] if v[1] > 0.5 else None,
                                      "error_stat": v[2] if v[3] > 0.5 else None})
        for it, counts in self.pending_hist:
            t.writers["proposal_ious"].write({"iteration": it, "bin_edges": self.EDGES.tolist(),
                                              "counts": [int(c) for c in counts.tolist()]})
        self.pending_stats.clear()
        self.pending_hist.clear()

    after_train = flush


class LogHook(HookBase):
    """``metrics.jsonl``, TensorBoard and the progress bar's numbers every ``log_period``
    iterations: the losses are summed on the device and read only here."""

    def before_train(self, t):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.start = time.perf_counter()

    def after_step(self, t):
        with torch.no_grad():
            for k, v in t.loss_dict.items():
                self.sums[k] = self.sums[k] + v.detach().float() if k in self.sums else v.detach().float()
            loss = t.loss.detach().float()
            self.sums["loss"] = self.sums["loss"] + loss if "loss" in self.sums else loss
            for k in runs.POSITIVE_KEYS:  # positives per image, before and after sampling
                v = getattr(t.head, k)
                self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1
        if t.iteration % t.cfg.log_period == 0 or t.iteration == t.end_iter:
            self.log(t)

    def log(self, t) -> None:
        now = time.perf_counter()
        means = {k: float(v) / self.count for k, v in self.sums.items()}  # host sync here only
        sec = (now - self.start) / self.count
        dyn = t.head.dynamic_state()
        ips = t.cfg.ims_per_batch / sec if sec > 0 else None
        record = {"iteration": t.iteration, "lr": t.lr, "loss": means["loss"],
                  **{k: means.get(k) for k in runs.LOSS_KEYS},
                  "iou_threshold": dyn["iou_threshold"], "beta": dyn["beta"],
                  **{k: means.get(k) for k in runs.POSITIVE_KEYS}, **t.pending_val, "sec_per_iter": sec,
                  "images_per_sec": ips, "peak_memory_mb": _peak_memory_mb(t.dev),
                  "elapsed_sec": t.elapsed(now)}
        t.sec_per_iter.append(sec)
        t.last_record = record
        if t.main:
            t.writers["metrics"].write(record)
            t.flush()
            if t.tb is not None:
                for k in ("loss", "lr", *runs.LOSS_KEYS, "iou_threshold", "beta", "images_per_sec"):
                    if record.get(k) is not None:
                        t.tb.add_scalar(f"train/{k}", record[k], t.iteration)
            t.bar.set_postfix(loss=f"{means['loss']:.3f}", lr=f"{t.lr:.2g}", thr=f"{dyn['iou_threshold']:.3f}",
                              beta=f"{dyn['beta']:.3f}", ips=f"{t.cfg.ims_per_batch / sec:.1f}", refresh=False)
        self.sums, self.count, self.start = {}, 0, time.perf_counter()
        t.pending_val = {}  # written once
        if not math.isfinite(means["loss"]):
            raise FloatingPointError(f"training diverged: non-finite loss at iteration {t.iteration} "
                                     f"(try a lower base_lr or amp=none)")


class PeriodicEvalHook(HookBase):
    """Validation every ``cfg.eval_period`` iterations (rank 0 scores, the others wait): AP,
    AP50, AP75 and AP90 on ``cfg.val_split`` go into the next ``metrics.jsonl`` record (``val_*``)
    and TensorBoard, and ``checkpoints/best.pth`` (+ ``best.json``) keeps the best model by
    ``cfg.best_metric``. The random state is saved and restored around it, so validation changes
    no trained weight; a resumed run reads the best so far from ``best.json``."""

    def before_train(self, t):
        best = read_json(t.ckpt_dir / runs.BEST_RECORD) if t.main else None
        self.best = float(best["value"]) if best else -math.inf
        self.dataset = None

    def after_step(self, t):
        if t.iteration % t.cfg.eval_period == 0:
            self.validate(t)

    def validate(self, t) -> None:
        from dynrcnn.checkpoint import state as checkpoint
        from dynrcnn.evaluation.coco_eval import coco_metrics, predict

        rng = checkpoint.get_rng_state()
        if t.main:
            if self.dataset is None:
                from dynrcnn.data.datasets import load_dataset

                self.dataset = load_dataset(t.cfg.data_root, t.cfg.val_split, train=False)
            detections, _ = predict(t.model, self.dataset, batch_size=t.cfg.eval_batch_size, device=str(t.dev),
                                    num_workers=0, amp=t.cfg.amp)
            m = coco_metrics(self.dataset.annotation_file, detections)
            vals = {f"val_{k}": m[k] for k in REPORTED_METRICS}
            t.pending_val = {"val_iteration": t.iteration, **vals}
            if t.tb is not None:
                for k, v in vals.items():
                    t.tb.add_scalar(f"val/{k[4:]}", v, t.iteration)
            value = m[t.cfg.best_metric]
            if value > self.best:
                self.best = value
                state = checkpoint.make_state(t.cfg, t.iteration, t.model, t.optimizer, t.scaler,
                                              [rng], t.world, t.lr, t.elapsed())
                checkpoint.write_checkpoint(t.ckpt_dir / runs.BEST_CHECKPOINT, state)
                write_json(t.ckpt_dir / runs.BEST_RECORD, {"iteration": t.iteration, "metric": t.cfg.best_metric,
                                                                 "value": value, **vals})
        t.ddp_model.train()
        checkpoint.set_rng_state(rng)
        if t.world > 1:
            torch.distributed.barrier()


class WandbHook(HookBase):
    """Weights & Biases (``cfg.tracker = "wandb"``, rank 0): the run's config, then every
    ``metrics.jsonl`` record (losses, lr, threshold, beta, positives, ``val_*``), every dynamic
    update. Offline (``WANDB_MODE=offline``, files under the run's
    ``wandb/``) when no API key is configured; ``wandb sync`` uploads them later."""

    def before_train(self, t):
        import os

        try:
            import wandb
        except ImportError:
            raise ConfigError("tracker=wandb needs the wandb package: pip install -e '.[wandb]'") from None
        mode = None if (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE")) else "offline"
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "dynrcnn"), name=t.out.name, dir=str(t.out),
                              config=t.cfg.to_dict(), resume="allow", id=_wandb_id(t.out), mode=mode)
        t.head.update_callbacks.append(lambda u: self.run.log(
            {"dynamic/iou_threshold": u.iou_threshold, "dynamic/beta": u.beta}, step=int(u.iteration)))

    def after_step(self, t):  # after LogHook (default_hooks): its record of this iteration, if any
        rec = t.last_record
        if rec is not None and rec["iteration"] == t.iteration:
            self.run.log({k: v for k, v in rec.items() if isinstance(v, (int, float)) and k != "iteration"},
                         step=t.iteration)

    def after_train(self, t):
        self.run.finish()


def _wandb_id(out) -> str:
    """A stable W&B run id per run directory (a resume continues the same W&B run)."""
    import hashlib

    return hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]


class ProgressHook(HookBase):
    def after_step(self, t):
        t.bar.update(1)

    def after_train(self, t):
        t.bar.close()


class CheckpointHook(HookBase):
    """A periodic checkpoint every ``checkpoint_period`` iterations and a final one (``last.pth``)."""

    def after_step(self, t):
        if t.iteration % t.cfg.checkpoint_period == 0:
            t.save_checkpoint(periodic=True)

    def after_train(self, t):
        if t.iteration > t.start_iter and t.iteration % t.cfg.checkpoint_period != 0:
            t.save_checkpoint(periodic=False)


def default_hooks(cfg: Config, main: bool) -> list[HookBase]:
    stats = [StatsHook()] if cfg.log_stats and main else []
    val = [PeriodicEvalHook()] if cfg.eval_period > 0 else []  # before LogHook: its numbers go into that record
    track = [WandbHook()] if cfg.tracker == "wandb" and main else []  # after LogHook: it sends LogHook's record
    return [DynamicLogHook(), *stats, *val, LogHook(), *track, ProgressHook(), CheckpointHook()]


__all__ = ["HookBase", "DynamicLogHook", "StatsHook", "LogHook", "PeriodicEvalHook", "WandbHook", "ProgressHook",
           "CheckpointHook",
           "default_hooks"]

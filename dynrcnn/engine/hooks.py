"""Training hooks: what happens around each iteration of :class:`dynrcnn.engine.trainer.Trainer`.

A hook overrides any of ``before_train``, ``after_step``, ``after_train`` (and ``flush``,
called before every checkpoint and every log), as detectron2's ``HookBase`` and torchvision's
reference scripts do; ``t`` is the trainer, whose state its class docstring lists.

Hooks talk to each other only through the trainer's :class:`~dynrcnn.engine.events.EventStorage`
(``t.storage``): *producers* put scalars and records into it, the one *writer*
(:class:`WriterHook`) reads it and writes the JSON-lines logs, TensorBoard and W&B. The stock
hooks, in the order they run after a step (:func:`default_hooks`):

1. :class:`DynamicLogHook`: the head's state at the start and at every update (``dynamic`` records);
2. :class:`StatsHook` (``log_stats``, rank 0): the per-iteration statistics (``stats`` and
   ``proposal_ious`` records, kept on the device until a flush);
3. :class:`PeriodicEvalHook` (``eval_period``): ``val_*`` scalars and the best checkpoint;
4. :class:`LogHook`: every ``log_period``, the losses averaged over the period, the learning rate,
   the head's threshold and beta, positives and timing, as scalars;
5. :class:`WriterHook`: writes what the producers put: one ``metrics.jsonl`` line per log (with
   the ``val_*`` put since the previous line) and every record;
6. :class:`DivergenceHook`: stops a run whose logged loss is not finite (after its line is written,
   before it is checkpointed);
7. :class:`ProgressHook`, 8. :class:`CheckpointHook`.
"""

from __future__ import annotations

import math
import time

import torch

from dynrcnn.config import REPORTED_METRICS, Config
from dynrcnn.engine.writers import EventWriter, JsonlWriters, TensorboardWriter, WandbWriter, metrics_record
from dynrcnn.io import read_json, write_json
from dynrcnn.rundir import runs

# ``t`` in every hook is a dynrcnn.engine.trainer.Trainer (not imported here: the engine imports this module)


PROC_STATUS = "/proc/self/status"
PROC_CLEAR_REFS = "/proc/self/clear_refs"


def reset_peak_memory(device: torch.device) -> str:
    """Start the run's own peak-memory measurement (at the start of every training segment) and
    return its scope: ``"run"`` where the high-water mark could be reset, else ``"process"``.

    A process-wide peak (``ru_maxrss``, or CUDA's peak since the process started) would give every
    run trained in one process (several report runs in one kernel or driver, a pretraining before
    the run) the largest peak of any run before it. So on CUDA the allocator's peak is reset, and on
    Linux the process's resident-set high-water mark (``VmHWM``) is, by writing ``5`` to
    ``/proc/self/clear_refs``: it starts again from the memory resident now (the model, the data,
    what the process holds already). Runs in separate processes (side by side, or ``dynrcnn train``)
    each measure their own process. Not measured: data-loader worker processes; and two runs
    training *at the same time* in one process cannot be told apart by any process-level counter."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "run"
    try:
        with open(PROC_CLEAR_REFS, "w") as f:
            f.write("5")
        return "run"
    except OSError:  # not Linux, or /proc not writable
        return "process"


def peak_memory_mb(device: torch.device) -> float:
    """The peak memory since :func:`reset_peak_memory`, in MiB: CUDA's allocated peak on a GPU, else
    the process's resident-set high-water mark (``VmHWM``; ``ru_maxrss`` where /proc is missing)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open(PROC_STATUS) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB on Linux
    except (ImportError, OSError):
        return float("nan")


def log_due(t) -> bool:
    """Whether iteration ``t.iteration`` is logged: every ``log_period`` and the last of the segment."""
    return t.iteration % t.cfg.log_period == 0 or t.iteration == t.end_iter


class HookBase:
    """A training hook: override any of the three; ``t`` is the :class:`~dynrcnn.engine.trainer.Trainer`."""

    def before_train(self, t: "Trainer") -> None:
        pass

    def after_step(self, t: "Trainer") -> None:
        pass

    def after_train(self, t: "Trainer") -> None:
        pass

    def flush(self, t: "Trainer") -> None:
        """Put what is buffered into ``t.storage`` (producers) or write it out (the writer);
        called before every log and every checkpoint."""


# --------------------------------------------------------------------------------------
# producers: put scalars and records into t.storage


class DynamicLogHook(HookBase):
    """``dynamic`` records: the head's state at the start of a fresh run and at every update."""

    def __init__(self):
        self.storage = None

    def before_train(self, t):
        self.storage = t.storage
        t.head.update_callbacks.append(self.on_update)
        if t.ckpt is None:
            first = {"iteration": 0, "iou_threshold": float(t.head.iou_threshold), "beta": float(t.head.beta),
                     "num_iou_stats": 0, "num_beta_stats": 0}
            if not (t.head.use_dla or t.head.use_dsl):
                first["fixed"] = True
            t.storage.put_record("dynamic", first)

    def on_update(self, event) -> None:
        self.storage.put_record("dynamic", {
            "iteration": event.iteration, "iou_threshold": event.iou_threshold, "beta": event.beta,
            "num_iou_stats": event.num_iou_stats, "num_beta_stats": event.num_beta_stats,
            "fg_fraction": None if math.isnan(event.fg_fraction) else event.fg_fraction})

    def after_train(self, t):
        t.head.update_callbacks.remove(self.on_update)


class StatsHook(HookBase):
    """``stats`` and ``proposal_ious`` records (``log_stats``, rank 0): the per-iteration
    statistics stay on the device until a flush (a log or a checkpoint) reads them."""

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
            t.storage.put_record("stats", {"iteration": it, "iou_stat": v[0] if v[1] > 0.5 else None,
                                           "error_stat": v[2] if v[3] > 0.5 else None})
        for it, counts in self.pending_hist:
            t.storage.put_record("proposal_ious", {"iteration": it, "bin_edges": self.EDGES.tolist(),
                                                   "counts": [int(c) for c in counts.tolist()]})
        self.pending_stats.clear()
        self.pending_hist.clear()

    after_train = flush


class PeriodicEvalHook(HookBase):
    """Validation every ``cfg.eval_period`` iterations (rank 0 scores, the others wait): AP,
    AP50, AP75 and AP90 on ``cfg.val_split`` are put as ``val_iteration`` and ``val_*`` scalars
    (the next ``metrics.jsonl`` line holds them), and ``checkpoints/best.pth`` (+ ``best.json``)
    keeps the best model by ``cfg.best_metric``. The random state is saved and restored around it,
    so validation changes no trained weight; a resumed run reads the best so far from ``best.json``."""

    def __init__(self):
        self.best = -math.inf
        self.dataset = None

    def before_train(self, t):
        best = read_json(t.ckpt_dir / runs.BEST_RECORD) if t.main else None
        self.best = float(best["value"]) if best else -math.inf

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
            t.storage.put_scalars(val_iteration=t.iteration, **vals)
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


class LogHook(HookBase):
    """Every ``log_period`` iterations (and the last), the scalars of a ``metrics.jsonl`` line:
    the losses averaged over the period (summed on the device, read only here), the learning
    rate, the head's threshold and beta, positives per image, timing and peak memory."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.start = 0.0

    def before_train(self, t):
        self.sums, self.count, self.start = {}, 0, time.perf_counter()

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
        if log_due(t):
            self.log(t)

    def log(self, t) -> None:
        now = time.perf_counter()
        means = {k: float(v) / self.count for k, v in self.sums.items()}  # host sync here only
        sec = (now - self.start) / self.count
        dyn = t.head.dynamic_state()
        t.storage.put_scalars(lr=t.lr, loss=means["loss"], **{k: means.get(k) for k in runs.LOSS_KEYS},
                              iou_threshold=dyn["iou_threshold"], beta=dyn["beta"],
                              **{k: means.get(k) for k in runs.POSITIVE_KEYS}, sec_per_iter=sec,
                              images_per_sec=t.cfg.ims_per_batch / sec if sec > 0 else None,
                              peak_memory_mb=peak_memory_mb(t.dev), elapsed_sec=t.elapsed(now))
        self.sums, self.count, self.start = {}, 0, time.perf_counter()


# --------------------------------------------------------------------------------------
# the writer and what reads the logged values


class WriterHook(HookBase):
    """The one writer (rank 0): after every step, the records put into ``t.storage`` go to every
    :class:`~dynrcnn.engine.writers.EventWriter` (the JSON-lines files, TensorBoard when
    installed, W&B with ``tracker=wandb``); at every log, after a flush of the producers, one
    ``metrics.jsonl`` line of the scalars put since the previous line
    (:func:`~dynrcnn.engine.writers.metrics_record`). Other ranks drop the records."""

    def __init__(self):
        self.writers: list[EventWriter] = []
        self.last_logged = 0  # the iteration of the previous metrics line

    def before_train(self, t):
        self.last_logged = t.start_iter
        if t.main:
            self.writers = [JsonlWriters(runs.open_loggers(t.out, t.cfg.log_stats))]
            tb = TensorboardWriter.open(runs.tensorboard_dir(t.out), t.start_iter)
            if tb is not None:
                self.writers.append(tb)
            if t.cfg.tracker == "wandb":
                self.writers.append(WandbWriter(t.out, t.cfg))
        self.flush(t)  # the records put before training (the head's initial state)

    def after_step(self, t):
        if log_due(t):
            t.flush()  # the producers' buffers into the storage, then this hook's flush writes them
            record = metrics_record(t.storage, t.iteration, self.last_logged)
            self.last_logged = t.iteration
            for w in self.writers:
                w.write_metrics(record)
        else:
            self.flush(t)

    def flush(self, t):
        for stream in t.storage.streams():
            records = t.storage.pop_records(stream)
            for w in self.writers:
                w.write_records(stream, records)

    def after_train(self, t):
        self.flush(t)
        for w in self.writers:
            w.close()
        self.writers = []


class DivergenceHook(HookBase):
    """Stops training when the loss just logged is not finite: after the writer has written the
    line that shows it, before a checkpoint could keep the diverged model."""

    def after_step(self, t):
        loss = t.storage.latest_at(t.iteration).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise FloatingPointError(f"training diverged: non-finite loss at iteration {t.iteration} "
                                     f"(try a lower base_lr or amp=none)")


class ProgressHook(HookBase):
    """The progress bar (rank 0 with ``progress``), its numbers from the last logged scalars."""

    def __init__(self):
        self.bar = None

    def before_train(self, t):
        from tqdm import tqdm

        self.bar = tqdm(total=t.cfg.max_iter, initial=t.start_iter, desc=f"{t.cfg.preset}/{t.cfg.method}",
                        dynamic_ncols=True, smoothing=0.05, disable=not (t.main and t.progress))

    def after_step(self, t):
        s = t.storage.latest_at(t.iteration)
        if "loss" in s:
            ips = s.get("images_per_sec")
            self.bar.set_postfix(loss=f"{s['loss']:.3f}", lr=f"{s['lr']:.2g}", thr=f"{s['iou_threshold']:.3f}",
                                 beta=f"{s['beta']:.3f}", ips=f"{ips:.1f}" if ips is not None else "inf",
                                 refresh=False)
        self.bar.update(1)

    def after_train(self, t):
        self.bar.close()


class CheckpointHook(HookBase):
    """A periodic checkpoint every ``checkpoint_period`` iterations and a final one (``last.pth``)
    at the segment's last iteration (collective: every rank calls it)."""

    def after_step(self, t):
        if t.iteration % t.cfg.checkpoint_period == 0:
            t.save_checkpoint(periodic=True)
        elif t.iteration == t.end_iter:
            t.save_checkpoint(periodic=False)


def default_hooks(cfg: Config, main: bool) -> list[HookBase]:
    """The stock hooks in their order (see the module docstring): producers, then the writer,
    then what must see the written line (divergence, progress, checkpoint)."""
    stats = [StatsHook()] if cfg.log_stats and main else []
    val = [PeriodicEvalHook()] if cfg.eval_period > 0 else []
    return [DynamicLogHook(), *stats, *val, LogHook(), WriterHook(), DivergenceHook(), ProgressHook(),
            CheckpointHook()]


__all__ = ["HookBase", "DynamicLogHook", "StatsHook", "PeriodicEvalHook", "LogHook", "WriterHook", "DivergenceHook",
           "ProgressHook", "CheckpointHook", "default_hooks", "log_due"]

"""Training: the paper's recipe, exact resume, logs, checkpoints and distributed training.

``train(cfg, out_dir)`` trains the detector a :class:`~dynrcnn.config.Config` describes and
writes a run directory (:mod:`dynrcnn.rundir.runs` owns its file names): the resolved config, the
environment, the JSON-lines logs, checkpoints, the ``train_done`` record and, with
``eval_at_end``, the evaluation. The caller's config is never modified (the engine trains a
copy with the learning rate resolved).

The loop is :class:`Trainer`: ``build`` (dataset, model, optimizer, resume), then one
``step`` per iteration followed by the hooks (:class:`HookBase`: ``before_train``,
``after_step``, ``after_train``, as in detectron2 and torchvision's references). The step and
the hooks put what they measure into one :class:`~dynrcnn.engine.events.EventStorage`
(``Trainer.storage``), and one writer hook writes it to the JSON-lines logs, TensorBoard and W&B
(:mod:`dynrcnn.engine.hooks` lists the stock hooks and their order); ``train_model(...,
hooks=[...])`` adds more.

A finished run is read-only: resuming it trains nothing and writes nothing
(:meth:`Trainer.run_finished`); ``overwrite`` is the only way to replace it. ``env.json`` is a
history (:mod:`dynrcnn.rundir.history`): the environment the run started in, then one entry per
resume, each with the equivalent ``dynrcnn`` command (:mod:`dynrcnn.rundir.command`).

Exact resume. A checkpoint (:mod:`dynrcnn.checkpoint.state`) holds everything the run's future
depends on; the train loader is a pure function of ``(seed, rank, world_size, batch index)``
and restarts at the checkpoint's iteration. On resume the logs are cut back to the
checkpoint's iteration, so a resumed run's logs equal an uninterrupted run's.

Distributed. Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) the process
group is initialised (NCCL on CUDA, gloo on CPU), each rank reads its share of every
iteration's ``ims_per_batch`` images, gradients are averaged by DDP, the dynamic head
gathers its statistics from all ranks, and only rank 0 writes files or a progress bar.

Speed. The loop adds no host synchronisation beyond logging: losses are summed as device
tensors and read with ``.item()`` every ``log_period`` iterations only; the head's
dynamic state is read at the same moments.
"""

from __future__ import annotations

import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dynrcnn.rundir.environment import cpu_model, numeric_path
from dynrcnn.checkpoint import state as checkpoint
from dynrcnn.rundir import command as run_command
from dynrcnn.rundir import history
from dynrcnn.rundir import integrity
from dynrcnn.rundir import provenance
from dynrcnn.rundir import runs
from dynrcnn.config import Config, check_device, resolve_lr, resolved_lr
from dynrcnn.errors import ConfigError
from dynrcnn.engine.events import EventStorage
from dynrcnn.engine.hooks import HookBase, WriterHook, default_hooks, reset_peak_memory
from dynrcnn.modeling.model import autocast_dtype, build_model, dynamic_head
from dynrcnn.checkpoint.weights import init_backbone


# --------------------------------------------------------------------------------------
# schedule, seeds, environment


def lr_at(cfg: Config, iteration: int) -> float:
    """Learning rate for the (0-based) ``iteration``: linear warm-up from
    ``warmup_factor * lr`` over ``warmup_iters``, then multiplied by ``lr_gamma`` at each
    of ``lr_steps``. A pure function of the iteration, so a resumed run gets exactly the
    same schedule."""
    factor = 1.0
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        factor = cfg.warmup_factor * (1 - alpha) + alpha
    decays = sum(1 for s in cfg.lr_steps if iteration >= s)
    return resolved_lr(cfg) * factor * cfg.lr_gamma ** decays


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> DistInfo:
    """Initialise ``torch.distributed`` from the ``torchrun`` environment variables (if any)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local, True)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device, world_size: int, amp_dtype: torch.dtype | None = None,
                command: str | None = None) -> dict:
    """What ``env.json`` records of one training segment: versions, machine, CPU model, numeric
    path, git commit, time, the equivalent ``dynrcnn`` ``command`` (default: this process's
    command line) and the process's own command line (``argv``: under a notebook it names the
    kernel, not the run)."""
    import datetime

    import torchvision

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine() or "cpu"
    argv = " ".join(sys.argv)
    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "numpy": np.__version__,
        "device": str(device), "device_name": name, "cpu_model": cpu_model(),
        "numeric_path": numeric_path(device, amp_dtype),
        "autocast": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "none",
        "num_processes": world_size,
        "torch_threads": torch.get_num_threads(), "git_commit": _git_commit(),
        "hostname": socket.gethostname(), "cpu_count": os.cpu_count(),
        "platform": platform.platform(), "command": command or argv, "argv": argv,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def json_value(value):
    """``value`` as it reads back from JSON (tuples become lists)."""
    import json

    return json.loads(json.dumps(value))


def _to_device(images, targets, device):
    non_blocking = device.type == "cuda"
    images = [im.to(device, non_blocking=non_blocking) for im in images]
    targets = [{k: (v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v) for k, v in t.items()}
               for t in targets]
    return images, targets


# --------------------------------------------------------------------------------------
# the trainer


@dataclass
class TrainResult:
    run_dir: Path
    model: nn.Module
    iteration: int
    finished: bool


class Trainer:
    """One training run of ``cfg`` (a resolved copy) into ``out``; see the module docstring.

    Every attribute is created in ``__init__``; those that need the checkpoint or the data are
    filled by :meth:`run` (``ckpt``, ``start_iter``) and :meth:`build` (the rest of "state"), the
    loop advances ``iteration`` and the step's outputs. Hooks read these; they exchange values
    only through ``storage``.

    Settings: ``cfg`` (the resolved copy trained), ``requested`` (the config as the caller gave
    it: the command ``env.json`` records), ``lr_message`` (how the learning rate was resolved),
    ``out`` and ``ckpt_dir`` (the run directory and its checkpoints), ``resume``, ``overwrite``,
    ``progress``, ``stop_after`` (stop after this iteration, as if interrupted).

    Processes: ``dist`` (:class:`DistInfo`), ``world`` (number of processes), ``main`` (rank 0:
    the only one that writes files), ``dev`` (this process's device).

    Events: ``storage`` (:class:`~dynrcnn.engine.events.EventStorage`), ``hooks`` (the stock hooks
    of :func:`~dynrcnn.engine.hooks.default_hooks` with the caller's inserted before the writer,
    so that what they put is written in the same log line).

    State (:meth:`build`): ``ckpt`` (the checkpoint resumed from, or None), ``dataset`` and
    ``data`` (its provenance record), ``model``, ``ddp_model`` (``model`` or its DDP wrapper),
    ``head`` (the dynamic R-CNN head), ``optimizer``, ``amp_dtype``/``use_amp``/``scaler``
    (mixed precision), ``elapsed_before`` (training seconds of earlier segments), ``data_iter``
    (the train loader, restarted at ``start_iter``).

    Loop: ``start_iter`` and ``end_iter`` (this segment trains iterations ``start_iter + 1`` to
    ``end_iter``), ``iteration`` (iterations done), ``t_start`` (the segment's start time),
    ``memory_scope`` (whether the logged peak memory is this run's or the process's,
    :func:`~dynrcnn.engine.hooks.reset_peak_memory`), and the
    last step's ``lr``, ``loss_dict`` and ``loss`` (device tensors: read at log time only).
    """

    def __init__(self, cfg: Config, out: Path, resume: bool, device: str, progress: bool,
                 stop_after: int | None, hooks: list[HookBase] | None = None, overwrite: bool = False):
        cfg.validate()
        self.cfg, self.lr_message = resolve_lr(cfg)
        self.requested = cfg  # as the caller gave it: the command env.json records
        if self.cfg.data_root:  # config.json works from any cwd
            self.cfg.data_root = str(Path(self.cfg.data_root).expanduser().resolve())
        self.out, self.resume, self.progress, self.overwrite = Path(out), resume, progress, overwrite
        integrity.check_out_dir(self.out, resume, overwrite)  # before anything starts (every rank)
        self.ckpt_dir = runs.checkpoint_dir(self.out)
        self.dist = setup_distributed(device)
        self.world, self.main = self.dist.world_size, self.dist.is_main
        self.dev = self._device(device)
        self.stop_after = stop_after
        # events
        self.storage = EventStorage()
        self.hooks = insert_hooks(default_hooks(self.cfg, self.main), list(hooks or []))
        # state (build)
        self.ckpt: dict | None = None
        self.dataset = None
        self.data: dict | None = None
        self.model: nn.Module | None = None
        self.ddp_model: nn.Module | None = None
        self.head = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.amp_dtype: torch.dtype | None = None
        self.use_amp = False
        self.scaler = None
        self.elapsed_before = 0.0
        self.memory_scope = "process"  # reset_peak_memory at the start of _run says "run" where it can
        self.data_iter = None
        # the loop
        self.start_iter = self.iteration = self.end_iter = 0
        self.t_start = 0.0
        self.lr = 0.0
        self.loss_dict: dict[str, torch.Tensor] = {}
        self.loss: torch.Tensor | None = None

    def _device(self, device: str) -> torch.device:
        if self.cfg.ims_per_batch % self.world:
            raise ConfigError(f"ims_per_batch={self.cfg.ims_per_batch} is not divisible by the number of "
                              f"processes ({self.world}); use --set ims_per_batch=<multiple of {self.world}>")
        dev = torch.device(check_device(device))
        if dev.type == "cuda" and self.world > 1:
            dev = torch.device("cuda", self.dist.local_rank)
        if dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.cfg.tf32
            torch.backends.cudnn.allow_tf32 = self.cfg.tf32
            torch.backends.cudnn.benchmark = False
        return dev

    # ---- setup

    def find_checkpoint(self, quiet: bool = False) -> dict | None:
        """The checkpoint to resume from (``None``: fresh start; ``integrity.check_out_dir`` has
        refused to start afresh over a run); ``quiet``: no "resuming from" line."""
        if not self.resume:
            return None
        found = checkpoint.find_resume_checkpoint(self.ckpt_dir) if self.ckpt_dir.exists() else None
        if found is None:
            if self.main:
                print(f"--resume: no checkpoint in {self.ckpt_dir}, starting from scratch", file=sys.stderr)
            return None
        path, ckpt = found
        checkpoint.check_compatible(ckpt, self.cfg, path)
        if self.main and not quiet:
            print(f"resuming from {path} (iteration {ckpt['iteration']})")
            if int(ckpt.get("world_size", self.world)) != self.world:
                print(f"warning: checkpoint was written with {ckpt.get('world_size')} processes, resuming with "
                      f"{self.world}: the data order after the resume point differs from an uninterrupted run",
                      file=sys.stderr)
        return ckpt

    def build(self) -> None:
        """Dataset, model, optimizer (and AMP scaler), restored from the checkpoint if any."""
        from dynrcnn.data.datasets import load_dataset

        cfg = self.cfg
        seed_everything(cfg.seed + self.dist.rank)
        self.dataset = load_dataset(cfg.data_root, cfg.train_split, train=True)
        self.data = provenance.data_record(self.dataset)
        if self.ckpt is not None:
            integrity.check_resume(self.out, cfg, self.data)  # the run's record stays true
        self.model = build_model(cfg, self.dataset.num_classes)
        if self.ckpt is None:
            init_backbone(self.model, cfg)  # pretrained backbone of a fresh run (RPN and head stay fresh)
        self.model.to(self.dev)
        if cfg.channels_last:  # the convolutions of the backbone + FPN in NHWC (oneDNN's/cuDNN's fast layout)
            self.model.backbone.to(memory_format=torch.channels_last)
        self.head = dynamic_head(self.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=lr_at(cfg, self.start_iter), momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.amp_dtype = autocast_dtype(self.dev.type, cfg.amp)  # None: float32 (e.g. a CPU without bf16)
        self.use_amp = self.amp_dtype is not None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.elapsed_before = 0.0
        if self.ckpt is not None:
            self.elapsed_before = checkpoint.restore(self.ckpt, self.model, self.optimizer, self.scaler)
        self.ddp_model = self.model
        if self.world > 1:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.dev.index] if self.dev.type == "cuda" else None,
                find_unused_parameters=False)
        self.head.record_raw_stats = bool(cfg.log_stats)
        self.head.record_proposal_ious = bool(cfg.log_stats)

    def open_run_dir(self) -> None:
        """Rank 0: the run directory, its logs cut back to the checkpoint, and its records
        (the writer hook opens the logs)."""
        if not self.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        runs.prepare_logs(self.out, self.start_iter if self.ckpt is not None else None,
                          finished=self.start_iter >= self.cfg.max_iter)
        if self.ckpt is None or not runs.is_run_dir(self.out):  # a resume keeps the recorded config
            runs.write_config(self.out, self.cfg, self.world, data=self.data)
        self.ckpt_dir.mkdir(exist_ok=True)  # after config.json: a run killed here is still known as one
        self.write_env()
        print(self.lr_message)

    def write_env(self) -> None:
        """``env.json``: a fresh run records the environment it starts in; a resume appends one
        entry (:mod:`dynrcnn.rundir.history`) and leaves what earlier segments recorded as written."""
        if self.ckpt is None:
            command = run_command.train_command(self.requested, self.out)
            runs.write_env(self.out, environment(self.dev, self.world, self.amp_dtype, command))
            return
        recorded = runs.read_config(self.out).to_dict() if runs.is_run_dir(self.out) else {}
        changed = {k: getattr(self.cfg, k) for k in integrity.MAY_CHANGE_ON_RESUME
                   if k in recorded and recorded[k] != json_value(getattr(self.cfg, k))}
        entry = {"iteration": self.start_iter,
                 **environment(self.dev, self.world, self.amp_dtype, run_command.resume_command(self.out, changed)),
                 # what may differ from config.json (integrity.MAY_CHANGE_ON_RESUME)
                 "resumed_with": {k: getattr(self.cfg, k) for k in integrity.MAY_CHANGE_ON_RESUME}}
        history.append_resume(self.out, entry)

    def open_loader(self) -> None:
        from dynrcnn.data.datasets import build_train_loader

        loader = build_train_loader(self.dataset, self.cfg.ims_per_batch // self.world, self.cfg.seed,
                                    start_batch=self.start_iter, num_workers=self.cfg.num_workers,
                                    rank=self.dist.rank, world_size=self.world, hflip_prob=self.cfg.hflip_prob)
        self.data_iter = iter(loader)  # (draws from the global torch RNG: before restoring it)
        if self.ckpt is not None:
            checkpoint.restore_rng(self.ckpt, self.dist.rank, self.world)

    # ---- the loop

    def step(self) -> None:
        """One iteration: learning rate, forward, backward, optimizer step."""
        self.lr = lr_at(self.cfg, self.iteration - 1)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        images, targets = _to_device(*next(self.data_iter), self.dev)
        with torch.autocast(self.dev.type, dtype=self.amp_dtype) if self.use_amp else nullcontext():
            self.loss_dict = self.ddp_model(images, targets)
        self.loss = sum(self.loss_dict.values())
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(self.loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.loss.backward()
            self.optimizer.step()

    def elapsed(self, now: float | None = None) -> float:
        return self.elapsed_before + (now if now is not None else time.perf_counter()) - self.t_start

    def flush(self) -> None:
        for h in self.hooks:
            h.flush(self)

    def save_checkpoint(self, periodic: bool) -> None:
        """Collective (every rank calls it); rank 0 writes."""
        self.flush()
        if self.world > 1:
            # DDP broadcasts rank 0's buffers (BatchNorm statistics) before each forward; do it
            # now as well so that every rank holds (and rank 0 saves) the same model
            with torch.no_grad():
                for b in self.model.buffers():
                    torch.distributed.broadcast(b, 0)
        rng_states = [checkpoint.get_rng_state()]
        if self.world > 1:
            gathered = [None] * self.world
            torch.distributed.all_gather_object(gathered, rng_states[0])
            rng_states = gathered
        if self.main:
            state = checkpoint.make_state(self.cfg, self.iteration, self.model, self.optimizer, self.scaler,
                                          rng_states, self.world, lr_at(self.cfg, self.iteration), self.elapsed())
            checkpoint.save_checkpoint(self.ckpt_dir, state, periodic, self.cfg.keep_checkpoints)
        if self.world > 1:
            torch.distributed.barrier()

    def run(self) -> TrainResult:
        if self.resume and not self.overwrite and runs.is_finished(self.out):
            return self.run_finished()
        created = self.main and not self.out.exists()
        lock = integrity.RunLock(self.out) if self.main else None
        if lock is not None:
            lock.acquire()  # a second writer of the same run directory is refused
        try:
            if self.main and self.overwrite:
                integrity.clear_run(self.out)
            return self._run()
        finally:
            if lock is not None:
                lock.release()
            if created:  # a run refused before it wrote anything leaves no folder behind (else a no-op)
                integrity.remove_empty_tree(self.out)

    def run_finished(self) -> TrainResult:
        """A resume of a finished run (``train_done.json``): nothing to train and nothing to
        write. The settings are checked against the record as for any resume (others are
        refused), the final model is loaded for the caller, and every file of the run keeps its
        bytes: no log cut, no ``env.json`` entry, no lock taken (a run another process is
        writing is still refused). Only a missing evaluation (``eval_at_end``) is added."""
        integrity.check_unlocked(self.out)
        self.ckpt = self.find_checkpoint(quiet=True)
        if self.ckpt is None:  # check_out_dir refuses a finished run without checkpoints first
            raise ConfigError(f"{self.out} is finished but holds no checkpoint; pass --overwrite to train it again")
        self.start_iter = self.iteration = int(self.ckpt["iteration"])
        self.build()  # integrity.check_resume, then the model restored from the checkpoint
        done = runs.read_train_done(self.out) or {}
        if self.main:
            print(f"{self.out}: finished at iteration {done.get('iterations', self.iteration)}; nothing to do")
        if self.cfg.eval_at_end and self.main and not runs.is_evaluated(self.out):
            from dynrcnn.evaluation.coco_eval import evaluate

            evaluate(self.out, device=str(self.dev), progress=self.progress)  # adds eval.json, replaces nothing
        if self.dist.initialized_here:
            torch.distributed.destroy_process_group()
        return TrainResult(self.out, self.model, self.iteration, True)

    def _run(self) -> TrainResult:
        self.memory_scope = reset_peak_memory(self.dev)  # this run's peak, not the process's so far
        self.ckpt = self.find_checkpoint()
        self.start_iter = self.iteration = int(self.ckpt["iteration"]) if self.ckpt is not None else 0
        self.build()
        self.open_run_dir()
        self.open_loader()
        self.end_iter = self.cfg.max_iter if self.stop_after is None else min(self.cfg.max_iter, self.stop_after)
        self.storage.step(self.start_iter)
        self.t_start = time.perf_counter()
        for h in self.hooks:
            h.before_train(self)
        self.ddp_model.train()
        for self.iteration in range(self.start_iter + 1, self.end_iter + 1):  # 1-based: iterations done
            self.storage.step(self.iteration)
            self.step()
            for h in self.hooks:
                h.after_step(self)
        for h in self.hooks:
            h.after_train(self)
        return self.finish()

    def finish(self) -> TrainResult:
        """``train_done.json`` and the evaluation of a finished run (kept when a finished run
        is resumed without training further)."""
        finished = self.iteration >= self.cfg.max_iter
        untouched = self.iteration == self.start_iter
        if self.main and finished and not (untouched and runs.is_finished(self.out)):
            logged = self.storage.values("sec_per_iter")  # one per log of this segment
            med = statistics.median(logged) if logged else None
            runs.write_train_done(self.out, {
                "iterations": self.iteration, "wall_time_sec": self.elapsed(),
                "sec_per_iter_median": med, "images_per_sec": self.cfg.ims_per_batch / med if med else None,
                "peak_memory_scope": self.memory_scope,  # hooks.reset_peak_memory: "run" or "process"
            })
        if finished and self.cfg.eval_at_end and self.main and not (untouched and runs.is_evaluated(self.out)):
            from dynrcnn.evaluation.coco_eval import evaluate

            evaluate(self.out, device=str(self.dev), progress=self.progress)  # rank 0 only
        if self.dist.initialized_here:
            torch.distributed.destroy_process_group()
        return TrainResult(self.out, self.model, self.iteration, finished)


def insert_hooks(stock: list[HookBase], extra: list[HookBase]) -> list[HookBase]:
    """``stock`` with ``extra`` inserted before the writer hook: the caller's hooks see the step
    and the stock producers' values, and what they put into the storage is in the same log."""
    at = next((i for i, h in enumerate(stock) if isinstance(h, WriterHook)), len(stock))
    return [*stock[:at], *extra, *stock[at:]]


def train(cfg: Config, out_dir: str | Path, resume: bool = False, device: str = "cpu",
          progress: bool = True, overwrite: bool = False) -> Path:
    """Train ``cfg`` into the run directory ``out_dir`` (created); return its path.

    ``resume=True`` continues from ``out_dir/checkpoints/last.pth`` (or the newest readable
    periodic checkpoint) and refuses settings or data other than the recorded ones
    (``integrity.check_resume``); ``env.json`` gets one entry per resume. A finished run
    (``train_done.json``) is read, never written: "finished at iteration N; nothing to do". A folder holding a run is refused unless ``resume`` or
    ``overwrite`` (which deletes that run's files first). With ``cfg.eval_at_end`` the final
    model is evaluated on ``cfg.val_split`` (``eval.json``). Under ``torchrun`` this runs
    distributed.
    """
    return train_model(cfg, out_dir, resume=resume, device=device, progress=progress, overwrite=overwrite).run_dir


def train_model(cfg: Config, out_dir: str | Path, resume: bool = False, device: str = "cpu",
                progress: bool = True, stop_after: int | None = None,
                hooks: list[HookBase] | None = None, overwrite: bool = False) -> TrainResult:
    """:func:`train`, returning the trained (unwrapped) model as well.

    ``stop_after=N`` stops after iteration ``N`` as if the process had been stopped right
    after writing a checkpoint there (``last.pth`` is written; no ``train_done.json``, no
    evaluation): the hook the resume tests use. ``hooks`` run after the stock producers and
    before the writer (:func:`insert_hooks`): a scalar they put with ``t.storage.put_scalar`` is in
    that log's ``metrics.jsonl`` line.
    """
    return Trainer(cfg, Path(out_dir), resume, device, progress, stop_after, hooks, overwrite).run()


__all__ = ["train", "train_model", "TrainResult", "Trainer", "HookBase", "insert_hooks", "lr_at", "setup_distributed",
           "DistInfo", "environment", "cpu_model", "numeric_path", "seed_everything"]

"""Training: the paper's recipe, exact resume, logs, checkpoints and distributed training.

``train(cfg, out_dir)`` trains the detector a :class:`~dynrcnn.config.Config` describes and
writes a run directory (file names fixed, see the README's "Run directory" section):
``config.json``, ``env.json``, ``metrics.jsonl``, ``dynamic.jsonl``, ``stats.jsonl`` and
``proposal_ious.jsonl`` (with ``log_stats``), ``checkpoints/``, ``train_done.json`` and,
with ``eval_at_end``, ``detections.json``/``eval.json``.

Exact resume. A checkpoint holds the model (the dynamic head's threshold, beta and
statistics records included), the optimizer, the iteration (the learning rate is a pure
function of it), the torch/CUDA/numpy/python RNG states, the data position (the train
loader is a pure function of ``(seed, rank, world_size, batch index)`` and restarts at the
checkpoint's iteration) and the preset/method/convention it belongs to. Everything is
stored as tensors and plain Python values so that ``torch.load(weights_only=True)`` reads
it. Checkpoints are written atomically (temporary file, then ``os.replace``); a resume
falls back to the newest readable periodic checkpoint when ``last.pth`` is damaged. On
resume the log files are cut back to the checkpoint's iteration, so a resumed run's logs
equal an uninterrupted run's.

Distributed. Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) the process
group is initialised (NCCL on CUDA, gloo on CPU), each rank reads its share of every
iteration's ``ims_per_batch`` images, gradients are averaged by DDP, the dynamic head
gathers its statistics from all ranks, and only rank 0 writes files or a progress bar.

Speed. The loop adds no host synchronisation beyond logging: losses are summed as device
tensors and read with ``.item()`` every ``log_period`` iterations only; the head's
dynamic state is read at the same moments.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dynrcnn.config import Config, scaled_lr
from dynrcnn.errors import CheckpointError, ConfigError
from dynrcnn.model import build_model, dynamic_head

CHECKPOINT_FORMAT = 1
LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
LOG_FILES = ("metrics.jsonl", "dynamic.jsonl", "stats.jsonl", "proposal_ious.jsonl")
CONFIG_EXTRAS = ("images_per_update", "world_size")


# --------------------------------------------------------------------------------------
# small helpers


def lr_at(cfg: Config, iteration: int) -> float:
    """Learning rate for the (0-based) ``iteration``: linear warm-up from
    ``warmup_factor * lr`` over ``warmup_iters``, then multiplied by ``lr_gamma`` at each
    of ``lr_steps``. A pure function of the iteration, so a resumed run gets exactly the
    same schedule."""
    lr = cfg.lr if cfg.lr is not None else scaled_lr(cfg.base_lr, cfg.ims_per_batch, cfg.reference_ims_per_batch)
    factor = 1.0
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        factor = cfg.warmup_factor * (1 - alpha) + alpha
    decays = sum(1 for s in cfg.lr_steps if iteration >= s)
    return lr * factor * cfg.lr_gamma ** decays


def resolve_lr(cfg: Config) -> str:
    """Fill ``cfg.lr`` by the linear scaling rule; return the sentence printed at start."""
    cfg.lr = scaled_lr(cfg.base_lr, cfg.ims_per_batch, cfg.reference_ims_per_batch)
    if cfg.ims_per_batch == cfg.reference_ims_per_batch:
        return f"lr {cfg.lr:g} at {cfg.ims_per_batch} img/iter (the preset's reference)"
    return (f"lr scaled from {cfg.base_lr:g} at {cfg.reference_ims_per_batch} img/iter "
            f"to {cfg.lr:g} at {cfg.ims_per_batch} img/iter (linear scaling rule)")


def config_from_dict(d: dict) -> Config:
    """A :class:`Config` from ``config.json`` (top-level extras such as ``world_size`` dropped)."""
    return Config.from_dict({k: v for k, v in d.items() if k not in CONFIG_EXTRAS})


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


def environment(device: torch.device, world_size: int) -> dict:
    """What ``env.json`` records."""
    import torchvision

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine() or "cpu"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "device_name": name,
        "num_processes": world_size,
        "torch_threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "command": " ".join(sys.argv),
    }


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    except (ImportError, OSError):
        return float("nan")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def truncate_jsonl(path: Path, iteration: int) -> None:
    """Keep only the lines of a JSON-lines log whose ``iteration`` is <= ``iteration``
    (dropping a torn last line)."""
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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in kept))
    os.replace(tmp, path)


class JsonlWriter:
    """Append-only JSON-lines file (flushed after every record); a no-op off rank 0."""

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


# --------------------------------------------------------------------------------------
# RNG state (as tensors / plain types so that weights_only loading works)


def get_rng_state() -> dict:
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


# --------------------------------------------------------------------------------------
# checkpoints


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:07d}.pth"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees either the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(ckpt_dir: Path, state: dict, periodic: bool, keep: int) -> None:
    """Write ``last.pth`` (and ``iter_XXXXXXX.pth`` when ``periodic``), keep the last ``keep``
    periodic ones."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if periodic:
        atomic_write_bytes(ckpt_dir / checkpoint_name(state["iteration"]), data)
        periodic_files = sorted(_periodic_checkpoints(ckpt_dir))
        for _, old in periodic_files[: max(0, len(periodic_files) - max(keep, 1))]:
            old.unlink(missing_ok=True)
    atomic_write_bytes(ckpt_dir / "last.pth", data)


def _periodic_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    out = []
    for p in ckpt_dir.glob("iter_*.pth"):
        m = re.fullmatch(r"iter_(\d+)\.pth", p.name)
        if m:
            out.append((int(m.group(1)), p))
    return out


def read_checkpoint(path: Path | str) -> dict:
    """Load a checkpoint with ``weights_only=True``; :class:`CheckpointError` if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle error, ...
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "iteration" not in ckpt:
        raise CheckpointError(f"{path} is not a dynrcnn checkpoint (no model/iteration)")
    return ckpt


def find_resume_checkpoint(ckpt_dir: Path) -> tuple[Path, dict] | None:
    """The newest readable checkpoint: ``last.pth``, else periodic ones newest first.

    A damaged file is skipped with a warning naming it. Returns ``None`` when the folder
    holds no checkpoint at all; raises :class:`CheckpointError` when all are damaged.
    """
    candidates = []
    if (ckpt_dir / "last.pth").exists():
        candidates.append(ckpt_dir / "last.pth")
    candidates += [p for _, p in sorted(_periodic_checkpoints(ckpt_dir), reverse=True)]
    if not candidates:
        return None
    errors = []
    for path in candidates:
        try:
            return path, read_checkpoint(path)
        except CheckpointError as e:
            warnings.warn(f"{e}; trying an older checkpoint", RuntimeWarning, stacklevel=2)
            print(f"warning: {e}; trying an older checkpoint", file=sys.stderr)
            errors.append(str(e))
    raise CheckpointError("no readable checkpoint in " + str(ckpt_dir) + ": " + "; ".join(errors))


def check_compatible(ckpt: dict, cfg: Config, path: Path | str) -> None:
    """Refuse a checkpoint of a different preset, method or convention (naming both)."""
    mine = {"preset": cfg.preset, "method": cfg.method, "convention": cfg.dynamic.convention}
    theirs = {k: ckpt.get(k) for k in mine}
    diff = [k for k in mine if theirs[k] != mine[k]]
    if diff:
        what = ", ".join(f"{k} {theirs[k]!r} (checkpoint) vs {mine[k]!r} (this run)" for k in diff)
        raise CheckpointError(
            f"checkpoint {path} belongs to a different run: {what}. Use another --out, or the "
            f"same --preset/--method/--convention as the checkpoint."
        )
    saved = ckpt.get("config", {}).get("dynamic", {}).get("interval")
    if saved is not None and int(saved) != cfg.dynamic.interval:
        raise CheckpointError(
            f"checkpoint {path} was trained with dynamic.interval={saved}, this run has "
            f"{cfg.dynamic.interval}; the dynamic statistics cannot be continued"
        )


# --------------------------------------------------------------------------------------
# training


@dataclass
class TrainResult:
    run_dir: Path
    model: nn.Module
    iteration: int
    finished: bool


def _to_device(images, targets, device):
    non_blocking = device.type == "cuda"
    images = [im.to(device, non_blocking=non_blocking) for im in images]
    targets = [{k: (v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v) for k, v in t.items()}
               for t in targets]
    return images, targets


def train(cfg: Config, out_dir: str | Path, resume: bool = False, device: str = "cpu",
          progress: bool = True) -> Path:
    """Train ``cfg`` into the run directory ``out_dir`` (created); return its path.

    ``resume=True`` continues from ``out_dir/checkpoints/last.pth`` (or the newest readable
    periodic checkpoint). With ``cfg.eval_at_end`` the final model is evaluated on
    ``cfg.val_split`` (``eval.json``). Under ``torchrun`` this runs distributed.
    """
    return train_model(cfg, out_dir, resume=resume, device=device, progress=progress).run_dir


def train_model(cfg: Config, out_dir: str | Path, resume: bool = False, device: str = "cpu",
                progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """:func:`train`, returning the trained (unwrapped) model as well.

    ``stop_after=N`` stops after iteration ``N`` as if the process had been stopped right
    after writing a checkpoint there (``last.pth`` is written; no ``train_done.json``, no
    evaluation): the hook the resume tests use.
    """
    from dynrcnn.data import build_train_loader, load_dataset

    cfg.validate()
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    dist_info = setup_distributed(device)
    rank, world = dist_info.rank, dist_info.world_size
    main = dist_info.is_main
    if cfg.ims_per_batch % world:
        raise ConfigError(f"ims_per_batch={cfg.ims_per_batch} is not divisible by the number of "
                          f"processes ({world}); use --set ims_per_batch=<multiple of {world}>")
    per_rank = cfg.ims_per_batch // world
    dev = torch.device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", dist_info.local_rank)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
        torch.backends.cudnn.benchmark = False

    lr_message = resolve_lr(cfg)
    if cfg.data_root:
        cfg.data_root = str(Path(cfg.data_root).expanduser().resolve())  # config.json works from any cwd

    # ---- resume or fresh start
    ckpt = None
    if resume:
        found = find_resume_checkpoint(ckpt_dir) if ckpt_dir.exists() else None
        if found is None:
            if main:
                print(f"--resume: no checkpoint in {ckpt_dir}, starting from scratch", file=sys.stderr)
        else:
            ckpt_path, ckpt = found
            check_compatible(ckpt, cfg, ckpt_path)
            if main:
                print(f"resuming from {ckpt_path} (iteration {ckpt['iteration']})")
    elif ckpt_dir.exists() and ((ckpt_dir / "last.pth").exists() or _periodic_checkpoints(ckpt_dir)):
        raise CheckpointError(f"{out} already holds checkpoints: pass --resume to continue that run, "
                              "or choose another --out")
    start_iter = int(ckpt["iteration"]) if ckpt is not None else 0
    if ckpt is not None and int(ckpt.get("world_size", world)) != world and main:
        print(f"warning: checkpoint was written with {ckpt.get('world_size')} processes, resuming with "
              f"{world}: the data order after the resume point differs from an uninterrupted run",
              file=sys.stderr)

    seed_everything(cfg.seed + rank)
    dataset = load_dataset(cfg.data_root, cfg.train_split, train=True)
    model = build_model(cfg, dataset.num_classes).to(dev)
    head = dynamic_head(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr_at(cfg, start_iter), momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    use_amp = dev.type == "cuda" and cfg.amp != "none"
    amp_dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if use_amp and cfg.amp == "fp16" else None

    elapsed_before = 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        elapsed_before = float(ckpt.get("elapsed_sec", 0.0))

    ddp_model = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=False
        )

    # ---- run directory and logs (rank 0 only)
    writers: dict[str, JsonlWriter] = {}
    tb = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        ckpt_dir.mkdir(exist_ok=True)
        for name in LOG_FILES:
            if ckpt is None:
                (out / name).unlink(missing_ok=True)
            else:
                truncate_jsonl(out / name, start_iter)
        if start_iter < cfg.max_iter:  # (resuming a finished run keeps its results)
            for stale in ("train_done.json", "eval.json", "detections.json"):
                (out / stale).unlink(missing_ok=True)
        resolved = cfg.to_dict()
        resolved["images_per_update"] = cfg.ims_per_batch * cfg.dynamic.interval
        resolved["world_size"] = world
        write_json(out / "config.json", resolved)
        env = environment(dev, world)
        env["resumed_from_iteration"] = start_iter if ckpt is not None else None
        write_json(out / "env.json", env)
        writers["metrics"] = JsonlWriter(out / "metrics.jsonl")
        writers["dynamic"] = JsonlWriter(out / "dynamic.jsonl")
        if cfg.log_stats:
            writers["stats"] = JsonlWriter(out / "stats.jsonl")
            writers["proposal_ious"] = JsonlWriter(out / "proposal_ious.jsonl")
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(out / "tensorboard"), purge_step=start_iter or None)
        except Exception:  # tensorboard is an optional extra
            tb = None
        print(lr_message)
    dyn_writer = writers.get("dynamic", JsonlWriter(None))

    def on_update(event) -> None:
        dyn_writer.write({"iteration": event.iteration, "iou_threshold": event.iou_threshold,
                          "beta": event.beta, "num_iou_stats": event.num_iou_stats,
                          "num_beta_stats": event.num_beta_stats})
        if tb is not None:
            tb.add_scalar("dynamic/iou_threshold", event.iou_threshold, event.iteration)
            tb.add_scalar("dynamic/beta", event.beta, event.iteration)

    head.update_callbacks.append(on_update)
    if ckpt is None:
        first = {"iteration": 0, "iou_threshold": float(head.iou_threshold), "beta": float(head.beta),
                 "num_iou_stats": 0, "num_beta_stats": 0}
        if not (head.use_dla or head.use_dsl):
            first["fixed"] = True
        dyn_writer.write(first)
    head.record_raw_stats = bool(cfg.log_stats)
    head.record_proposal_ious = bool(cfg.log_stats)

    loader = build_train_loader(dataset, per_rank, cfg.seed, start_batch=start_iter,
                                num_workers=cfg.num_workers, rank=rank, world_size=world,
                                hflip_prob=cfg.hflip_prob)
    data_iter = iter(loader)  # (draws from the global torch RNG: before restoring it)
    if ckpt is not None:
        per_rank_rng = ckpt.get("rng", {}).get("ranks")
        if per_rank_rng:
            set_rng_state(per_rank_rng[rank] if len(per_rank_rng) == world else per_rank_rng[0])

    end_iter = cfg.max_iter if stop_after is None else min(cfg.max_iter, stop_after)
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.max_iter, initial=start_iter, desc=f"{cfg.preset}/{cfg.method}",
               dynamic_ncols=True, smoothing=0.05, disable=not (main and progress))

    loss_sums: dict[str, torch.Tensor] = {}
    pending_stats: list[tuple[int, torch.Tensor]] = []
    pending_hist: list[tuple[int, torch.Tensor]] = []
    interval_start = time.perf_counter()
    interval_iters = 0
    sec_per_iter_log: list[float] = []
    t_start = time.perf_counter()
    edges = torch.linspace(0, 1, 21)

    def flush_stats() -> None:
        if "stats" in writers:
            for it, vals in pending_stats:
                v = vals.tolist()
                writers["stats"].write({"iteration": it,
                                        "iou_stat": v[0] if v[1] > 0.5 else None,
                                        "error_stat": v[2] if v[3] > 0.5 else None})
            for it, counts in pending_hist:
                writers["proposal_ious"].write({"iteration": it, "bin_edges": edges.tolist(),
                                                "counts": [int(c) for c in counts.tolist()]})
        pending_stats.clear()
        pending_hist.clear()

    def checkpoint(iteration: int, periodic: bool) -> None:
        flush_stats()
        if world > 1:
            # DDP broadcasts rank 0's buffers (BatchNorm statistics) before each forward; do it
            # now as well so that every rank holds (and rank 0 saves) the same model
            with torch.no_grad():
                for b in model.buffers():
                    torch.distributed.broadcast(b, 0)
        rng_states = [get_rng_state()]
        if world > 1:
            gathered = [None] * world
            torch.distributed.all_gather_object(gathered, rng_states[0])
            rng_states = gathered
        if main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "iteration": iteration,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": {"iteration": iteration, "lr": lr_at(cfg, iteration)},
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": {"ranks": rng_states},
                "data_position": iteration,
                "world_size": world,
                "preset": cfg.preset,
                "method": cfg.method,
                "convention": cfg.dynamic.convention,
                "config": json.loads(json.dumps(cfg.to_dict())),
                "elapsed_sec": elapsed_before + time.perf_counter() - t_start,
            }
            save_checkpoint(ckpt_dir, state, periodic, cfg.keep_checkpoints)
        if world > 1:
            torch.distributed.barrier()

    ddp_model.train()
    iteration = start_iter
    nan_check = None
    for iteration in range(start_iter + 1, end_iter + 1):  # 1-based: iterations completed
        lr = lr_at(cfg, iteration - 1)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, targets = next(data_iter)
        images, targets = _to_device(images, targets, dev)
        with torch.autocast(dev.type, dtype=amp_dtype) if use_amp else nullcontext():
            loss_dict = ddp_model(images, targets)
        loss = sum(loss_dict.values())
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            for k, v in loss_dict.items():
                loss_sums[k] = loss_sums[k] + v.detach().float() if k in loss_sums else v.detach().float()
            loss_sums["loss"] = loss_sums["loss"] + loss.detach().float() if "loss" in loss_sums else loss.detach().float()
            if cfg.log_stats and main:
                s = head.last_stats or {}
                zero = torch.zeros((), device=dev)
                packed = torch.stack([
                    s.get("iou", zero).float(), s.get("iou_valid", zero).float(),
                    s.get("error", zero).float(), s.get("error_valid", zero).float(),
                ])
                pending_stats.append((iteration, packed))
                if iteration % cfg.log_period == 0 and head.last_proposal_ious is not None:
                    pending_hist.append((iteration, torch.histc(head.last_proposal_ious.float(), bins=20, min=0, max=1)))
        interval_iters += 1

        if iteration % cfg.log_period == 0 or iteration == end_iter:
            now = time.perf_counter()
            means = {k: float(v) / interval_iters for k, v in loss_sums.items()}  # host sync here only
            sec = (now - interval_start) / interval_iters
            if not math.isfinite(means["loss"]):
                nan_check = iteration
            dyn = head.dynamic_state()
            record = {"iteration": iteration, "lr": lr, "loss": means["loss"]}
            record.update({k: means.get(k) for k in LOSS_KEYS})
            record.update({"iou_threshold": dyn["iou_threshold"], "beta": dyn["beta"],
                           "sec_per_iter": sec, "images_per_sec": cfg.ims_per_batch / sec if sec > 0 else None,
                           "peak_memory_mb": _peak_memory_mb(dev),
                           "elapsed_sec": elapsed_before + now - t_start})
            sec_per_iter_log.append(sec)
            if main:
                writers["metrics"].write(record)
                flush_stats()
                if tb is not None:
                    for k in ("loss", "lr", *LOSS_KEYS, "iou_threshold", "beta", "images_per_sec"):
                        if record.get(k) is not None:
                            tb.add_scalar(f"train/{k}", record[k], iteration)
                bar.set_postfix(loss=f"{means['loss']:.3f}", lr=f"{lr:.2g}", thr=f"{dyn['iou_threshold']:.3f}",
                                beta=f"{dyn['beta']:.3f}", ips=f"{cfg.ims_per_batch / sec:.1f}", refresh=False)
            loss_sums = {}
            interval_iters = 0
            interval_start = time.perf_counter()
            if nan_check is not None:
                raise FloatingPointError(f"training diverged: non-finite loss at iteration {nan_check} "
                                         f"(try a lower base_lr or amp=none)")
        bar.update(1)
        if iteration % cfg.checkpoint_period == 0:
            checkpoint(iteration, periodic=True)

    finished = iteration >= cfg.max_iter
    if iteration > start_iter and (iteration % cfg.checkpoint_period != 0):
        checkpoint(iteration, periodic=False)
    flush_stats()
    bar.close()
    head.update_callbacks.remove(on_update)
    for w in writers.values():
        w.close()
    if tb is not None:
        tb.close()
    wall = elapsed_before + time.perf_counter() - t_start
    if main and finished and not (iteration == start_iter and (out / "train_done.json").exists()):
        med = statistics.median(sec_per_iter_log) if sec_per_iter_log else None
        write_json(out / "train_done.json", {
            "iterations": iteration,
            "wall_time_sec": wall,
            "sec_per_iter_median": med,
            "images_per_sec": cfg.ims_per_batch / med if med else None,
        })
    if finished and cfg.eval_at_end:
        if main and not (iteration == start_iter and (out / "eval.json").exists()):
            from dynrcnn.evaluation import evaluate

            evaluate(out, device=str(dev), progress=progress)  # rank 0 only; the others finish
    if dist_info.initialized_here:
        torch.distributed.destroy_process_group()
    return TrainResult(out, model, iteration, finished)


__all__ = ["train", "train_model", "TrainResult", "lr_at", "resolve_lr", "read_checkpoint",
           "find_resume_checkpoint", "save_checkpoint", "check_compatible", "config_from_dict",
           "setup_distributed", "get_rng_state", "set_rng_state", "truncate_jsonl"]

"""The integrity of a run directory: no silent overwrite (:func:`check_out_dir`,
:func:`clear_run`), one writer at a time (:class:`RunLock`), the immutable training record
(:func:`check_resume`) and the reuse rule of the notebooks (:func:`train_action`,
:func:`refuse_replacing`). What a run
records of its data is :mod:`dynrcnn.rundir.provenance`.

File names come from :mod:`dynrcnn.rundir.runs`; this module spells none.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dynrcnn.errors import DynrcnnError
from dynrcnn.rundir.provenance import same_path
from dynrcnn.rundir.runs import CHECKPOINTS, CONFIG, DATA_RECORD, LOCK, TRAIN_DONE, artefacts, has_checkpoints, is_evaluated, is_finished, is_run_dir
from dynrcnn.io import read_json, shown_path
from dynrcnn.config import flat_dict


# --------------------------------------------------------------------------------------
# overwrite rules and the lock: no silent overwrite, no concurrent writers

#: settings that may change when a run is resumed (they do not change what is trained); every
#: other setting, and the training data (``config.json``'s ``data``), must stay as recorded
MAY_CHANGE_ON_RESUME = ("num_workers", "log_period", "checkpoint_period", "keep_checkpoints", "log_stats",
                        "eval_at_end", "eval_batch_size", "tf32", "eval_period", "best_metric", "tracker")


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


def check_unlocked(run_dir) -> None:
    """Refuse to act on ``run_dir`` while another live process writes it (:class:`RunLock`),
    without taking the lock: what a reader of a finished run checks."""
    RunLock(run_dir).check_free()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def remove_empty_tree(path) -> bool:
    """Remove ``path`` if it holds nothing but empty folders (never a file); True if removed."""
    path = Path(path)
    if not path.is_dir() or any(p.is_file() or p.is_symlink() for p in path.rglob("*")):
        return False
    for d in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        d.rmdir()
    path.rmdir()
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
                self._refuse_live(holder, me)
                import sys

                print(f"removing the stale lock {self.path} (process {holder.get('pid')} is gone)", file=sys.stderr)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.owned = True
            return self
        raise DynrcnnError(f"could not take the lock {self.path}; another process took it; try again")

    def _refuse_live(self, holder: dict, me: dict) -> None:
        """Raise when ``holder`` (the lock file's content) is a live process other than ``me``."""
        same_host = holder.get("host") == me["host"]
        if same_host and isinstance(holder.get("pid"), int) and _pid_alive(holder["pid"]):
            raise DynrcnnError(f"{self.path.parent} is being written by process {holder['pid']} "
                               f"({self.path}); wait for it to finish or stop it") from None
        if holder and not same_host:
            raise DynrcnnError(f"{self.path.parent} is locked by process {holder.get('pid')} on "
                               f"{holder.get('host')} ({self.path}); delete the lock file if that "
                               "process no longer runs") from None

    def check_free(self) -> None:
        """Refuse, as :meth:`acquire` would, when another live process holds the lock, but take
        nothing and write nothing (a reader of a finished run; a stale lock is left alone)."""
        import socket

        if not self.path.exists():
            return
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        holder = self._holder()
        if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
            return
        self._refuse_live(holder, me)

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

# resolved by the engine / machine-specific / not what is trained (validation during training
# restores the RNG it draws, so it changes no trained weight: tests/test_engine.py)
_NOT_COMPARED = ("lr", "data_root", "num_workers", "eval_period", "best_metric", "tracker")


def config_diff(recorded: dict, cfg, ignore=(), missing_differs: bool = True) -> list[str]:
    """``key: recorded -> wanted`` for every setting of ``cfg`` that differs from the
    ``recorded`` config (dotted keys; ``ignore``: top-level or dotted keys not compared; a key
    the record lacks counts as a difference only with ``missing_differs``)."""
    rec, wanted = flat_dict(recorded), flat_dict(json.loads(json.dumps(cfg.to_dict())))
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


def _mismatch(run_dir: Path, cfg) -> str | None:
    """Why ``run_dir``'s record is not a run of ``cfg`` (``None``: it is): another config
    (``lr``, ``data_root`` and ``num_workers`` excepted), or training annotations other than
    those ``cfg`` reads now (a regenerated benchmark makes every run on it stale)."""
    from dynrcnn.data.datasets import annotation_file
    from dynrcnn.io import file_sha256

    recorded = read_json(run_dir / CONFIG) or {}
    diffs = config_diff(recorded, cfg, ignore=_NOT_COMPARED)
    if diffs:
        return f"{run_dir} was trained with another config ({'; '.join(diffs[:5])})"
    held = (recorded.get(DATA_RECORD) or {}).get("annotation_sha256")
    current = annotation_file(cfg.data_root, cfg.train_split) if cfg.data_root else None
    if held and current is not None and current.is_file() and file_sha256(current) != held:
        return f"{run_dir} was trained on other data ({current} changed since)"
    return None


def train_action(run_dir, cfg, force: bool = False) -> tuple[str, str]:
    """What the train notebook does with ``run_dir``: ``reuse`` a finished run of the same
    config (read only: nothing of it is written again, a missing evaluation is the evaluation
    step's), ``resume`` an interrupted one of the same config (from its newest readable
    checkpoint; one killed before its first checkpoint starts again, as ``--resume`` does, since
    it holds nothing but its own start) or ``train`` from scratch; the second element says why."""
    run_dir = Path(run_dir)
    if force:
        return "train", f"force=True: training {run_dir} from scratch"
    finished = is_finished(run_dir) and is_run_dir(run_dir)
    interrupted = not is_finished(run_dir) and is_run_dir(run_dir)
    mismatch = _mismatch(run_dir, cfg) if finished or interrupted else None  # hashes the annotations once
    if finished and mismatch is None:
        return "reuse", (f"reusing the finished run {shown_path(run_dir)} (same config; read only; pass force=True "
                         "to retrain)")
    if interrupted and mismatch is None and has_checkpoints(run_dir):
        return "resume", f"resuming the interrupted run {shown_path(run_dir)} from its newest checkpoint"
    if interrupted and mismatch is None:
        return "resume", (f"restarting the interrupted run {shown_path(run_dir)}: it stopped before its first "
                          "checkpoint (same config)")
    why = mismatch or f"{shown_path(run_dir)} is not finished (no {TRAIN_DONE})"
    return "train", why + ": training from scratch"


def refuse_replacing(run_dir, action: str, why: str, remedy: str) -> None:
    """Refuse :func:`train_action`'s ``train`` over a folder that holds run files (a run of
    another config or data): the notebooks and studies never replace a run unasked. ``why`` is
    ``train_action``'s reason; ``remedy`` says what the caller may pass instead."""
    if action == "train" and artefacts(run_dir):
        raise DynrcnnError(f"{shown_path(run_dir)} already holds a run that this one would replace "
                           f"({why.rsplit(': training', 1)[0]}); {remedy}")

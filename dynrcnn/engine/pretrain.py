"""Backbone pretraining on generated data: the miniature benchmark's stand-in for ImageNet.

The paper fine-tunes from an ImageNet-pretrained backbone, so its dynamic threshold crosses 0.5
within the first few hundred iterations. The miniature runs cannot download ImageNet weights,
and training from scratch for a few CPU minutes leaves the detector too weak for the
high-IoU regime the method is about. So the project pretrains its own backbone once, the same
way for every run:

* a Faster R-CNN *baseline* (a pretraining preset, e.g. ``mini_pretrain``) is trained on a
  miniature benchmark drawn with its own data seed (:data:`PRETRAIN_DATA_SEED`), never on the
  evaluation images;
* only the backbone (ResNet body and FPN) is kept; every run's RPN and R-CNN head start fresh
  (:func:`dynrcnn.checkpoint.weights.init_backbone`), as when fine-tuning from ImageNet;
* the weights are written to ``<root>/backbone-<preset>-<recipe hash>.pth`` with a JSON record
  of their SHA-256 and the recipe. A run's config records the file and its checksum; loading
  checks it. A changed recipe (preset fields, data seed and size, generator version) gives a
  new hash, so stale weights are never reused; missing weights are rebuilt (``dynrcnn
  pretrain``, or automatically when a run asks for ``model.backbone_weights=pretrained:<preset>``).

The recipe is deterministic on one device and thread count; the checksum pins the exact file a
run used, so two machines that rebuild slightly different weights never mix them silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path

import torch

from dynrcnn.config import PRETRAINED_PREFIX, Config
from dynrcnn.data.datasets import annotation_file
from dynrcnn.engine.trainer import train_model
from dynrcnn.errors import CheckpointError, ConfigError
from dynrcnn.data.mini import FORMAT_VERSION, generate_mini
from dynrcnn.presets import PRETRAIN_DATA, PRETRAINED_ROOT, get_preset
from dynrcnn.io import atomic_write_bytes
from dynrcnn.checkpoint.weights import extract_backbone
from dynrcnn.io import CHECKOUT, file_sha256

PRETRAIN_DATA_SEED = 1  # the evaluation benchmarks use other seeds (0 and 2)
DEFAULT_ROOT = Path(PRETRAINED_ROOT)
# this package's checkout (when it is one): its weights are found from any working folder
CHECKOUT_ROOT = CHECKOUT / PRETRAINED_ROOT
CACHE_ENV = "DYNRCNN_CACHE"  # the user cache folder, default ~/.cache/dynrcnn


def search_roots(root: str | Path = DEFAULT_ROOT) -> list[Path]:
    """Where existing pretrained weights are looked for, in order: ``root`` (relative to the
    working folder), this checkout's ``data/pretrained``, and ``$DYNRCNN_CACHE/pretrained``
    (default ``~/.cache/dynrcnn/pretrained``); new weights are built under ``root``."""
    cache = Path(os.environ.get(CACHE_ENV) or "~/.cache/dynrcnn").expanduser() / "pretrained"
    roots = []
    for r in (Path(root), CHECKOUT_ROOT, cache):
        if all(r.resolve() != q.resolve() for q in roots):
            roots.append(r)
    return roots


def pretrain_preset(value: str) -> str | None:
    """The pretraining preset named by a ``model.backbone_weights`` value, or None for a file."""
    if not value.startswith(PRETRAINED_PREFIX):
        return None
    name = value[len(PRETRAINED_PREFIX):]
    if name not in PRETRAIN_DATA:
        raise ConfigError(f"model.backbone_weights={value}: no pretraining preset {name!r}; "
                          f"choose one of {', '.join(PRETRAINED_PREFIX + n for n in PRETRAIN_DATA)}")
    return name


def pretrain_config(preset: str, data_root: str | Path = "") -> Config:
    """The pretraining run's config: ``preset`` on ``data_root``."""
    cfg = get_preset(preset)
    cfg.data_root = str(data_root)
    return cfg


def data_recipe(preset: str) -> dict:
    """The generated data the pretraining run reads (what ``dynrcnn data mini`` is asked for)."""
    n_train, n_val = PRETRAIN_DATA[preset]
    return {"seed": PRETRAIN_DATA_SEED, "n_train": n_train, "n_val": n_val,
            "image_size": get_preset(preset).model.min_size, "format_version": FORMAT_VERSION}


def recipe(preset: str) -> dict:
    """Everything the weights depend on (but where they are stored)."""
    d = pretrain_config(preset).to_dict()
    # what cannot change the weights: where things are, logging, evaluation, the dynamic head's
    # settings (a baseline does not use them)
    for key in ("data_root", "lr", "dynamic", "checkpoint_period", "keep_checkpoints", "log_period", "log_stats",
                "eval_at_end", "eval_batch_size", "num_workers", "amp", "tf32", "val_split", "eval_period",
                "best_metric", "tracker"):
        d.pop(key, None)
    for key in ("backbone_weights", "backbone_sha256"):
        d["model"].pop(key, None)
    return {"preset": preset, "config": d, "data": data_recipe(preset),
            "kept": "backbone (ResNet body + FPN), stored in float16"}


def weights_path(preset: str, root: str | Path = DEFAULT_ROOT) -> Path:
    """Where the weights of ``preset``'s current recipe live under ``root``."""
    digest = hashlib.sha256(json.dumps(recipe(preset), sort_keys=True).encode()).hexdigest()[:12]
    return Path(root) / f"backbone-{preset}-{digest}.pth"


def _checked(path: Path) -> tuple[Path, str] | None:
    """``(path, sha256)`` when ``path`` and its record exist and agree; None when absent."""
    record = path.with_suffix(".json")
    if not (path.is_file() and record.is_file()):
        return None
    sha = json.loads(record.read_text())["sha256"]
    if file_sha256(path) != sha:
        raise CheckpointError(f"{path} does not match the SHA-256 in {record}: the file changed; delete both "
                              "and run 'dynrcnn pretrain' to rebuild it")
    return path, sha


def find_pretrained(preset: str, root: str | Path = DEFAULT_ROOT) -> tuple[Path, str] | None:
    """``(path, sha256)`` of ``preset``'s checked weights in the first of :func:`search_roots`
    that holds them; None when none does (a build is needed)."""
    for r in search_roots(root):
        found = _checked(weights_path(preset, r))
        if found is not None:
            return found
    return None


def build_dir(preset: str, root: str | Path = DEFAULT_ROOT) -> Path:
    """The run folder a build of ``preset``'s weights under ``root`` trains into (and resumes)."""
    return Path(root) / ("run-" + weights_path(preset, root).stem[len("backbone-"):])


def ensure_pretrained(preset: str = "mini_pretrain", root: str | Path = DEFAULT_ROOT, device: str = "cpu",
                      progress: bool = True, log=print, build: bool = True) -> tuple[Path, str]:
    """Return ``(path, sha256)`` of ``preset``'s backbone weights, building them if missing.

    Existing weights in any of :func:`search_roots` are used after their checksum is verified.
    Building (never silent: it says what it draws, where, and how much it trains; refused with
    ``build=False``) generates the pretraining benchmark under ``root`` (if missing), trains the
    preset's baseline into ``root/run-<preset>-<hash>`` (resuming an interrupted build), keeps the
    backbone and writes ``backbone-<preset>-<hash>.pth`` plus its ``.json`` record.
    """
    root = Path(root)
    found = find_pretrained(preset, root)
    if found is not None:
        return found
    path = weights_path(preset, root)
    data = data_recipe(preset)
    looked = ", ".join(str(r) for r in search_roots(root))
    if not build:
        raise CheckpointError(f"no pretrained backbone {path.name} in {looked}; build it with 'dynrcnn pretrain "
                              f"--preset {preset} --root {root}' ({data['n_train']} images, "
                              f"{get_preset(preset).max_iter} iterations) or point model.backbone_weights at a file")
    log(f"no pretrained backbone {path.name} in {looked}: building it under {root} (draws {data['n_train']} images, "
        f"trains {get_preset(preset).max_iter} iterations: minutes on a laptop CPU; --no-build-backbone refuses)")
    data_root = root / f"data-seed{data['seed']}-v{data['format_version']}-{data['image_size']}px-{data['n_train']}"
    if not annotation_file(data_root, "val").is_file():
        log(f"pretraining data: drawing {data['n_train']} images (data seed {data['seed']}) into {data_root}")
        generate_mini(data_root, seed=data["seed"], n_train=data["n_train"], n_val=data["n_val"],
                      image_size=data["image_size"], progress=progress)
    cfg = pretrain_config(preset, data_root)
    run_dir = build_dir(preset, root)
    log(f"pretraining the backbone: {cfg.max_iter} iterations of {preset} into {run_dir}")
    result = train_model(cfg, run_dir, resume=run_dir.exists(), device=device, progress=progress)
    path, sha = save_backbone(result.model.state_dict(), preset, root, f"trained by dynrcnn pretrain into {run_dir}")
    log(f"backbone weights: {path} (sha256 {sha[:12]})")
    return path, sha


def save_backbone(model_state: dict, preset: str, root: str | Path, provenance: str) -> tuple[Path, str]:
    """Write the backbone of a trained detector's state dict as ``preset``'s weights under ``root``
    (float16) with its JSON record (SHA-256, recipe, where it came from); returns ``(path, sha256)``."""
    path = weights_path(preset, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in extract_backbone(model_state).items()}
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    sha = file_sha256(path)
    rec = {"sha256": sha, "recipe": recipe(preset), "provenance": provenance,
           "rebuild": f"dynrcnn pretrain --preset {preset}"}
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(rec, indent=2, sort_keys=True).encode())
    return path, sha


def resolve_backbone(cfg: Config, root: str | Path = DEFAULT_ROOT, device: str = "cpu",
                     progress: bool = True, build: bool = True) -> Config:
    """A copy of ``cfg`` whose ``backbone_weights=pretrained:<preset>`` names a concrete,
    checksummed file (found in :func:`search_roots`, built if missing unless ``build=False``);
    other configs are returned unchanged."""
    preset = pretrain_preset(cfg.model.backbone_weights)
    if preset is None:
        return cfg
    path, sha = ensure_pretrained(preset, root, device=device, progress=progress, build=build)
    if cfg.model.backbone_sha256 and cfg.model.backbone_sha256 != sha:
        raise CheckpointError(f"model.backbone_sha256 pins {cfg.model.backbone_sha256[:12]}, but {path} (the "
                              f"{preset} backbone found) has {sha[:12]}; set model.backbone_weights to the pinned file")
    model = dataclasses.replace(cfg.model, backbone_weights=str(Path(path).resolve()), backbone_sha256=sha)
    return dataclasses.replace(cfg, model=model)


__all__ = ["PRETRAIN_DATA_SEED", "DEFAULT_ROOT", "CHECKOUT_ROOT", "search_roots", "pretrain_preset", "pretrain_config", "data_recipe",
           "recipe", "weights_path", "find_pretrained", "build_dir", "ensure_pretrained", "save_backbone", "resolve_backbone"]

"""Backbone pretraining on generated data: the miniature benchmark's stand-in for ImageNet.

The paper fine-tunes from an ImageNet-pretrained backbone, so its dynamic threshold crosses 0.5
within the first few hundred iterations. The miniature runs cannot download ImageNet weights,
and training from scratch for a few CPU minutes leaves the detector too weak for the
high-IoU regime the method is about. So the project pretrains its own backbone once, the same
way for every run:

* a Faster R-CNN *baseline* (the ``mini_pretrain`` preset) is trained on a miniature benchmark
  drawn with its own data seed (:data:`PRETRAIN_DATA_SEED`), never on the evaluation images;
* only the backbone (ResNet body and FPN) is kept; every run's RPN and R-CNN head start fresh
  (:func:`init_backbone`), as when fine-tuning from ImageNet;
* the weights are written to ``<root>/backbone-<recipe hash>.pth`` with a JSON record of their
  SHA-256 and the recipe. A run's config records the file and its checksum; loading checks it.
  A changed recipe (preset fields, data seed, generator version) gives a new hash, so stale
  weights are never reused, and missing weights are rebuilt (``dynrcnn pretrain`` or
  automatically when a run asks for ``model.backbone_weights=pretrained:mini``).

The recipe is deterministic on one device and thread count; the checksum pins the exact file a
run used, so two machines that rebuild slightly different weights never mix them silently.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from dynrcnn.config import PRETRAINED_AUTO, Config, get_preset
from dynrcnn.engine import train_model
from dynrcnn.errors import CheckpointError
from dynrcnn.mini import FORMAT_VERSION, generate_mini
from dynrcnn.weights import extract_backbone, file_sha256

PRETRAIN_PRESET = "mini_pretrain"
PRETRAIN_DATA_SEED = 1  # the evaluation benchmarks use other seeds (0 by default)
DEFAULT_ROOT = Path("data") / "pretrained"


def pretrain_config(data_root: str | Path) -> Config:
    """The pretraining run's config: the ``mini_pretrain`` preset on ``data_root``."""
    cfg = get_preset(PRETRAIN_PRESET)
    cfg.data_root = str(data_root)
    return cfg


def data_recipe(cfg: Config) -> dict:
    """The generated data the pretraining run reads (what ``dynrcnn data mini`` is asked for)."""
    return {"seed": PRETRAIN_DATA_SEED, "n_train": 2000, "n_val": 100,
            "image_size": cfg.model.min_size, "format_version": FORMAT_VERSION}


def recipe(cfg: Config) -> dict:
    """Everything the weights depend on (but where they are stored)."""
    d = cfg.to_dict()
    d.pop("data_root")
    d["model"].pop("backbone_weights")
    d["model"].pop("backbone_sha256")
    return {"config": d, "data": data_recipe(cfg), "kept": "backbone (ResNet body + FPN)"}


def recipe_hash(rec: dict) -> str:
    return hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:12]


def weights_path(root: str | Path = DEFAULT_ROOT) -> Path:
    """Where the weights of the current recipe live under ``root``."""
    return Path(root) / f"backbone-{recipe_hash(recipe(pretrain_config('')))}.pth"


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def ensure_pretrained(root: str | Path = DEFAULT_ROOT, device: str = "cpu", progress: bool = True,
                      log=print) -> tuple[Path, str]:
    """Return ``(path, sha256)`` of the current recipe's backbone weights, building them if missing.

    Building generates the pretraining benchmark under ``root/data-seed<N>`` (if missing),
    trains the ``mini_pretrain`` baseline into ``root/run-<hash>`` (resuming an interrupted
    build), keeps the backbone and writes ``backbone-<hash>.pth`` plus ``backbone-<hash>.json``.
    """
    root = Path(root)
    path = weights_path(root)
    record = path.with_suffix(".json")
    if path.is_file() and record.is_file():
        sha = json.loads(record.read_text())["sha256"]
        if file_sha256(path) == sha:
            return path, sha
        raise CheckpointError(f"{path} does not match the SHA-256 in {record}: delete both and rerun")

    cfg0 = pretrain_config("")
    data = data_recipe(cfg0)
    data_root = root / f"data-seed{data['seed']}-v{data['format_version']}-{data['image_size']}px"
    if not (data_root / "annotations" / "instances_val.json").is_file():
        log(f"pretraining data: generating {data['n_train']} images (seed {data['seed']}) into {data_root}")
        generate_mini(data_root, seed=data["seed"], n_train=data["n_train"], n_val=data["n_val"],
                      image_size=data["image_size"], progress=progress)
    cfg = pretrain_config(data_root)
    run_dir = root / f"run-{path.stem.split('-', 1)[1]}"
    log(f"pretraining the backbone ({cfg.max_iter} iterations, {PRETRAIN_PRESET}) into {run_dir}")
    result = train_model(cfg, run_dir, resume=run_dir.exists(), device=device, progress=progress)
    state = extract_backbone(result.model.state_dict())
    _atomic_save(state, path)
    sha = file_sha256(path)
    rec = {"sha256": sha, "recipe": recipe(cfg0), "run_dir": str(run_dir)}
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(json.dumps(rec, indent=2, sort_keys=True))
    os.replace(tmp, record)
    log(f"backbone weights: {path} (sha256 {sha[:12]})")
    return path, sha


def resolve_backbone(cfg: Config, root: str | Path = DEFAULT_ROOT, device: str = "cpu",
                     progress: bool = True) -> Config:
    """A copy of ``cfg`` whose ``backbone_weights=pretrained:mini`` names a concrete, checksummed file."""
    if cfg.model.backbone_weights != PRETRAINED_AUTO:
        return cfg
    path, sha = ensure_pretrained(root, device=device, progress=progress)
    model = dataclasses.replace(cfg.model, backbone_weights=str(Path(path).resolve()), backbone_sha256=sha)
    return dataclasses.replace(cfg, model=model)

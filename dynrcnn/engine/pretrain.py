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

A preset is resolved once into a :class:`PretrainRecipe` (its config, data, recipe record and hash);
every function here accepts the preset's name or that recipe and passes the recipe on, so one
build reads the preset once.

The recipe is deterministic on one device and thread count; the checksum pins the exact file a
run used, so two machines that rebuild slightly different weights never mix them silently.
"""

from __future__ import annotations

import copy
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


@dataclasses.dataclass(frozen=True)
class PretrainRecipe:
    """A pretraining preset resolved once: what its weights depend on and where they go.

    ``config`` is the preset's config (no ``data_root``: see :meth:`config_on`), ``data`` the
    generated benchmark it trains on (what ``dynrcnn data mini`` is asked for), ``record``
    everything the weights depend on (but where they are stored; written into the weights'
    JSON record) and ``digest`` its hash, which names the weights file.
    """

    preset: str
    config: Config
    data: dict
    record: dict
    digest: str

    @classmethod
    def of(cls, preset: str) -> "PretrainRecipe":
        cfg = get_preset(preset)
        cfg.data_root = ""
        n_train, n_val = PRETRAIN_DATA[preset]
        data = {"seed": PRETRAIN_DATA_SEED, "n_train": n_train, "n_val": n_val,
                "image_size": cfg.model.min_size, "format_version": FORMAT_VERSION}
        d = cfg.to_dict()
        # what cannot change the weights: where things are, logging, evaluation, the dynamic head's
        # settings (a baseline does not use them)
        for key in ("data_root", "lr", "dynamic", "checkpoint_period", "keep_checkpoints", "log_period", "log_stats",
                    "eval_at_end", "eval_batch_size", "num_workers", "amp", "tf32", "val_split", "eval_period",
                    "best_metric", "tracker"):
            d.pop(key, None)
        for key in ("backbone_weights", "backbone_sha256"):
            d["model"].pop(key, None)
        record = {"preset": preset, "config": d, "data": data,
                  "kept": "backbone (ResNet body + FPN), stored in float16"}
        digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]
        return cls(preset, cfg, data, record, digest)

    def config_on(self, data_root: str | Path = "") -> Config:
        """The pretraining run's config on ``data_root`` (a copy: the recipe stays as resolved)."""
        cfg = copy.deepcopy(self.config)
        cfg.data_root = str(data_root)
        return cfg

    def weights_path(self, root: str | Path = DEFAULT_ROOT) -> Path:
        """Where the weights of this recipe live under ``root``."""
        return Path(root) / f"backbone-{self.preset}-{self.digest}.pth"

    def build_dir(self, root: str | Path = DEFAULT_ROOT) -> Path:
        """The run folder a build of these weights under ``root`` trains into (and resumes)."""
        return Path(root) / f"run-{self.preset}-{self.digest}"


def resolve_recipe(preset: "str | PretrainRecipe") -> PretrainRecipe:
    """``preset``'s :class:`PretrainRecipe` (a recipe is returned as given: resolved once)."""
    return preset if isinstance(preset, PretrainRecipe) else PretrainRecipe.of(preset)


def pretrain_config(preset: "str | PretrainRecipe", data_root: str | Path = "") -> Config:
    """The pretraining run's config: ``preset`` on ``data_root``."""
    return resolve_recipe(preset).config_on(data_root)


def data_recipe(preset: "str | PretrainRecipe") -> dict:
    """The generated data the pretraining run reads (what ``dynrcnn data mini`` is asked for)."""
    return dict(resolve_recipe(preset).data)


def recipe(preset: "str | PretrainRecipe") -> dict:
    """Everything the weights depend on (but where they are stored)."""
    return copy.deepcopy(resolve_recipe(preset).record)


def weights_path(preset: "str | PretrainRecipe", root: str | Path = DEFAULT_ROOT) -> Path:
    """Where the weights of ``preset``'s current recipe live under ``root``."""
    return resolve_recipe(preset).weights_path(root)


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


def find_pretrained(preset: "str | PretrainRecipe", root: str | Path = DEFAULT_ROOT) -> tuple[Path, str] | None:
    """``(path, sha256)`` of ``preset``'s checked weights in the first of :func:`search_roots`
    that holds them; None when none does (a build is needed)."""
    rec = resolve_recipe(preset)
    for r in search_roots(root):
        found = _checked(rec.weights_path(r))
        if found is not None:
            return found
    return None


def build_dir(preset: "str | PretrainRecipe", root: str | Path = DEFAULT_ROOT) -> Path:
    """The run folder a build of ``preset``'s weights under ``root`` trains into (and resumes)."""
    return resolve_recipe(preset).build_dir(root)


def ensure_pretrained(preset: "str | PretrainRecipe" = "mini_pretrain", root: str | Path = DEFAULT_ROOT,
                      device: str = "cpu", progress: bool = True, log=print,
                      build: bool = True) -> tuple[Path, str]:
    """Return ``(path, sha256)`` of ``preset``'s backbone weights, building them if missing.

    Existing weights in any of :func:`search_roots` are used after their checksum is verified.
    Building (never silent: it says what it draws, where, and how much it trains; refused with
    ``build=False``) generates the pretraining benchmark under ``root`` (if missing), trains the
    preset's baseline into ``root/run-<preset>-<hash>`` (resuming an interrupted build), keeps the
    backbone and writes ``backbone-<preset>-<hash>.pth`` plus its ``.json`` record.
    """
    root = Path(root)
    rec = resolve_recipe(preset)  # once: passed on below
    preset = rec.preset
    found = find_pretrained(rec, root)
    if found is not None:
        return found
    path = rec.weights_path(root)
    data = rec.data
    looked = ", ".join(str(r) for r in search_roots(root))
    if not build:
        raise CheckpointError(f"no pretrained backbone {path.name} in {looked}; build it with 'dynrcnn pretrain "
                              f"--preset {preset} --root {root}' ({data['n_train']} images, "
                              f"{rec.config.max_iter} iterations) or point model.backbone_weights at a file")
    log(f"no pretrained backbone {path.name} in {looked}: building it under {root} (draws {data['n_train']} images, "
        f"trains {rec.config.max_iter} iterations: minutes on a laptop CPU; --no-build-backbone refuses)")
    data_root = root / f"data-seed{data['seed']}-v{data['format_version']}-{data['image_size']}px-{data['n_train']}"
    if not annotation_file(data_root, "val").is_file():
        log(f"pretraining data: drawing {data['n_train']} images (data seed {data['seed']}) into {data_root}")
        generate_mini(data_root, seed=data["seed"], n_train=data["n_train"], n_val=data["n_val"],
                      image_size=data["image_size"], progress=progress)
    cfg = rec.config_on(data_root)
    run_dir = rec.build_dir(root)
    log(f"pretraining the backbone: {cfg.max_iter} iterations of {preset} into {run_dir}")
    result = train_model(cfg, run_dir, resume=run_dir.exists(), device=device, progress=progress)
    path, sha = save_backbone(result.model.state_dict(), rec, root, f"trained by dynrcnn pretrain into {run_dir}")
    log(f"backbone weights: {path} (sha256 {sha[:12]})")
    return path, sha


def save_backbone(model_state: dict, preset: "str | PretrainRecipe", root: str | Path,
                  provenance: str) -> tuple[Path, str]:
    """Write the backbone of a trained detector's state dict as ``preset``'s weights under ``root``
    (float16) with its JSON record (SHA-256, recipe, where it came from); returns ``(path, sha256)``."""
    rec = resolve_recipe(preset)
    path = rec.weights_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in extract_backbone(model_state).items()}
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    sha = file_sha256(path)
    record = {"sha256": sha, "recipe": rec.record, "provenance": provenance,
              "rebuild": f"dynrcnn pretrain --preset {rec.preset}"}
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(record, indent=2, sort_keys=True).encode())
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


__all__ = ["PRETRAIN_DATA_SEED", "DEFAULT_ROOT", "CHECKOUT_ROOT", "PretrainRecipe", "resolve_recipe", "search_roots",
           "pretrain_preset", "pretrain_config", "data_recipe",
           "recipe", "weights_path", "find_pretrained", "build_dir", "ensure_pretrained", "save_backbone", "resolve_backbone"]

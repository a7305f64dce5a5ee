"""Backbone weights a run starts from: checksums, loading into a detector, extraction.

A run's ``model.backbone_weights`` names a backbone (ResNet body + FPN) state dict and
``model.backbone_sha256`` its checksum; :func:`init_backbone` loads it into a fresh detector
(the RPN and the R-CNN head keep their random initialisation, as when fine-tuning from
ImageNet). A value ``pretrained:<preset>`` (:data:`~dynrcnn.config.PRETRAINED_PREFIX`) stands for
the project's own pretrained weights and is turned into a file by
:func:`dynrcnn.engine.pretrain.resolve_backbone` before training.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dynrcnn.config import PRETRAINED_PREFIX, Config
from dynrcnn.errors import CheckpointError, ConfigError
from dynrcnn.io import file_sha256

BACKBONE_PREFIX = "backbone."


def load_backbone_state(path: str | Path, sha256: str = "") -> dict:
    """Read a backbone state dict (``weights_only``), checking its SHA-256 when one is given."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"backbone weights {path} not found; rebuild them with "
                              f"'dynrcnn pretrain' or set model.backbone_weights={PRETRAINED_PREFIX}mini_pretrain")
    if sha256 and file_sha256(path) != sha256:
        raise CheckpointError(f"backbone weights {path} do not match their recorded SHA-256 "
                              f"({sha256[:12]}...): the file changed; delete it and run 'dynrcnn pretrain'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or not a torch file
        raise CheckpointError(f"backbone weights {path} are unreadable ({type(e).__name__}); "
                              "delete the file and run 'dynrcnn pretrain'") from None
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"backbone weights {path} hold no state dict")
    return state


def init_backbone(model: torch.nn.Module, cfg: Config) -> None:
    """Load ``cfg.model.backbone_weights`` into the detector's backbone (RPN and head untouched)."""
    if not cfg.model.backbone_weights:
        return
    if cfg.model.backbone_weights.startswith(PRETRAINED_PREFIX):
        raise ConfigError(f"model.backbone_weights={cfg.model.backbone_weights} names the project's pretrained backbone: "
                          "start the run with 'dynrcnn train' (which builds or finds it), or run 'dynrcnn pretrain' "
                          "and pass the file it prints")
    state = load_backbone_state(cfg.model.backbone_weights, cfg.model.backbone_sha256)
    own = model.backbone.state_dict()
    bad = [k for k in state if k not in own or own[k].shape != state[k].shape]
    missing = [k for k in own if k not in state and not k.startswith("fpn.")]
    if bad or missing:
        first = (bad or missing)[0]
        raise ConfigError(f"{cfg.model.backbone_weights} does not fit model.arch={cfg.model.arch} with "
                          f"fpn_channels={cfg.model.fpn_channels}: "
                          f"{'unexpected or mis-shaped' if bad else 'missing'} entry {first!r}")
    # a file with the ResNet body only (no "fpn." entries) leaves the FPN freshly initialised
    model.backbone.load_state_dict(state, strict=False)


def extract_backbone(model_state: dict) -> dict:
    """The backbone entries of a detector's state dict, without their ``backbone.`` prefix."""
    return {k[len(BACKBONE_PREFIX):]: v.clone() for k, v in model_state.items() if k.startswith(BACKBONE_PREFIX)}

"""Dynamic R-CNN (ECCV 2020) on torchvision: the method, data, training, evaluation, report."""

from dynrcnn.config import Config, DynamicConfig, ModelConfig
from dynrcnn.modeling.dynamic_head import DynamicRoIHeads, DynamicUpdate
from dynrcnn.modeling.model import build_model, dynamic_head, fasterrcnn_r50_fpn, slim_fasterrcnn
from dynrcnn.presets import get_preset

__version__ = "0.1.0"

__all__ = [
    "Config", "DynamicConfig", "ModelConfig", "get_preset",
    "DynamicRoIHeads", "DynamicUpdate",
    "build_model", "dynamic_head", "fasterrcnn_r50_fpn", "slim_fasterrcnn",
]

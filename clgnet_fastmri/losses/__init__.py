"""Losses of CLGNet: L1 + alpha * contrastive loss in a frozen VGG19 feature space."""

from .contrastive import (
    DEFAULT_LAYER_WEIGHTS,
    PAPER_ALPHA,
    CLGNetLoss,
    ContrastiveLoss,
    LossParts,
)
from .vgg import (
    IMAGENET_FILE_NAME,
    IMAGENET_URL,
    LAYER_NAMES,
    VGG_WEIGHTS_CHOICES,
    VGG19Features,
    VGG19Weights,
    imagenet_weights_available,
    imagenet_weights_path,
    resolve_vgg19_weights,
    weights_file,
)

__all__ = [
    "CLGNetLoss",
    "ContrastiveLoss",
    "DEFAULT_LAYER_WEIGHTS",
    "IMAGENET_FILE_NAME",
    "IMAGENET_URL",
    "LAYER_NAMES",
    "LossParts",
    "PAPER_ALPHA",
    "VGG19Features",
    "VGG19Weights",
    "VGG_WEIGHTS_CHOICES",
    "imagenet_weights_available",
    "imagenet_weights_path",
    "resolve_vgg19_weights",
    "weights_file",
]

"""Frozen VGG19 feature extractor for the contrastive loss (paper Sec. 3.3, DESIGN §2).

Features are taken after relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1, i.e. torchvision's
``vgg19().features`` sliced at [0:2], [2:7], [7:12], [12:21], [21:30].

Choices this module makes (the paper leaves them open):

* **Input presentation.** The network works on fastmri's instance-normalised magnitude images
  (per image zero mean, unit standard deviation, clamped to +-6). ImageNet-trained VGG expects
  RGB in [0, 1] normalised per channel with the ImageNet mean/std, i.e. inputs whose every
  channel has roughly zero mean and unit standard deviation. The instance-normalised image
  already has exactly those two moments, so it is fed *as is* (no further affine), repeated to
  the three input channels. A fixed map of the +-6 range to [0, 1] followed by the ImageNet
  normalisation would shrink the contrast to about a third, and a per-image min/max map would
  present the output, the ground truth and the negatives with different scalings.
* **Grayscale to three channels** is done exactly but for free: ``conv1_1`` applied to an
  image repeated on its three input channels equals ``conv1_1`` with its weights summed over
  the input channels applied to the single-channel image, so the weights are folded once at
  load time and the 3-channel copy is never built.
* **Frozen and never saved.** The weights are plain tensors held outside the module's
  parameters and buffers: they get no gradient, are not in any ``state_dict`` (they would add
  ~50 MB to every checkpoint and are re-loadable), are not counted as parameters, and DDP does
  not broadcast them each step (it broadcasts every registered buffer, persistent or not).
  ``_apply`` is extended so that ``.to(device)``, ``.to(dtype)``, ``.cuda()``, ``.half()`` ...
  of any parent module still move and convert them. ``nn.DataParallel`` replicas would not get
  per-device copies; Lightning 2 no longer offers DP, use DDP.
* **Layout**: activations and weights are channels_last (NHWC), see ``forward``.
* **Always in eval mode**: ``train()`` is a no-op (VGG19's feature part has no dropout or
  batch norm, so this only keeps the contract explicit).

Weights: ``"imagenet"`` (torchvision's ``VGG19_Weights.IMAGENET1K_V1`` through the usual
torch-hub cache), a path to a local state dict, or ``None`` for random initialisation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError

# torchvision's VGG19_Weights.IMAGENET1K_V1 (the file name carries the SHA-256 prefix that
# torchvision checks on download).
IMAGENET_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
IMAGENET_FILE_NAME = "vgg19-dcbb9e9d.pth"
_IMAGENET_HASH_PREFIX = "dcbb9e9d"

# Indices in torchvision's vgg19().features of all its convolutions, with (in, out) channels.
_VGG19_CONVS: Dict[int, Tuple[int, int]] = {
    0: (3, 64), 2: (64, 64),
    5: (64, 128), 7: (128, 128),
    10: (128, 256), 12: (256, 256), 14: (256, 256), 16: (256, 256),
    19: (256, 512), 21: (512, 512), 23: (512, 512), 25: (512, 512),
    28: (512, 512), 30: (512, 512), 32: (512, 512), 34: (512, 512),
}  # fmt: skip

# The five slices up to relu5_1: conv indices, "P" = 2x2 max-pool. Every conv is followed by
# a ReLU, so each slice ends on relu{n}_1.
_SLICES: Tuple[Tuple[Union[int, str], ...], ...] = (
    (0,),                      # [0:2]   relu1_1
    (2, "P", 5),               # [2:7]   relu2_1
    (7, "P", 10),              # [7:12]  relu3_1
    (12, 14, 16, "P", 19),     # [12:21] relu4_1
    (21, 23, 25, "P", 28),     # [21:30] relu5_1
)  # fmt: skip
_USED_CONVS: Tuple[int, ...] = tuple(op for s in _SLICES for op in s if op != "P")

LAYER_NAMES = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")

WeightsArg = Union[str, "os.PathLike[str]", None]

def imagenet_weights_path() -> Path:
    """Where torchvision (and this module) keep the ImageNet VGG19 weights.

    ``<torch.hub.get_dir()>/checkpoints/vgg19-dcbb9e9d.pth``; ``torch.hub.get_dir()`` follows
    ``TORCH_HOME`` (default ``~/.cache/torch/hub``).
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE_NAME


def imagenet_weights_available() -> bool:
    """Whether the ImageNet VGG19 weights are in the torch-hub cache (never downloads)."""
    return imagenet_weights_path().is_file()


def load_vgg19_state_dict(weights: WeightsArg = "imagenet", *, download: bool = True,
                          progress: bool = True) -> Dict[int, Tuple[Tensor, Tensor]]:
    """Read VGG19 convolution weights up to conv5_1 as ``{features index: (weight, bias)}``.

    ``weights="imagenet"``: the torch-hub cache file (see :func:`imagenet_weights_path`),
    downloaded with torch.hub (SHA-256 checked, as torchvision does) only when absent and
    ``download`` is true. Otherwise ``weights`` is a path to a state dict of torchvision's
    ``vgg19`` (``features.N.weight`` ...) or of its ``features`` (``N.weight`` ...).
    Files are always read with ``torch.load(..., weights_only=True)``. Every failure a user
    can fix raises :class:`~clgnet_fastmri.errors.UserError` naming the file and the fix.
    """
    if isinstance(weights, str) and weights == "imagenet":
        path = imagenet_weights_path()
        if not path.is_file():
            _download_imagenet(path, download=download, progress=progress)
        return _read_state_file(path, fix=(
            f"delete it so that it is downloaded again, or replace it with a good copy of "
            f"{IMAGENET_URL}"
        ))
    if weights is None or not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be 'imagenet' or a file path, not {weights!r}")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(
            f"{path}: VGG19 weights file not found; check the path, or use "
            f"weights='imagenet' (torchvision's {IMAGENET_FILE_NAME} in the torch hub cache, "
            f"{imagenet_weights_path()}) or weights=None for random initialisation"
        )
    return _read_state_file(path, fix="pass a state dict of torchvision's vgg19 or of its "
                            "`features`, e.g. torch.save(torchvision.models.vgg19("
                            "weights='IMAGENET1K_V1').state_dict(), path)")


def _download_imagenet(path: Path, *, download: bool, progress: bool) -> None:
    missing = (
        f"the ImageNet VGG19 weights for the contrastive loss are missing: {path} does not "
        f"exist"
    )
    fix = (
        f"download {IMAGENET_URL} on a machine with internet access and put it at {path} "
        "(the torch hub cache; TORCH_HOME moves it), or pass a local copy of that file as "
        "weights=<path> (a state dict of torchvision's vgg19 or of its `features`), or use "
        "weights=None for random initialisation (no ImageNet prior)"
    )
    if not download:
        raise UserError(f"{missing}; {fix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(
            IMAGENET_URL, str(path), hash_prefix=_IMAGENET_HASH_PREFIX, progress=progress
        )
    except Exception as exc:  # no network, proxy, disk full, hash mismatch ...
        raise UserError(
            f"{missing} and downloading them failed ({_one_line(exc)}); {fix}"
        ) from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _read_state_file(path: Path, *, fix: str) -> Dict[int, Tuple[Tensor, Tensor]]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # weights_only refuses pickled modules/objects; torch.load also fails on truncated or
        # foreign files. Either way it is not a readable state dict.
        raise UserError(
            f"{path}: cannot be read as a VGG19 state dict ({_one_line(exc)}); {fix}"
        ) from None
    try:
        return _vgg19_convs_from_state(state)
    except ValueError as exc:
        raise UserError(f"{path}: not a VGG19 state dict ({exc}); {fix}") from None


def _vgg19_convs_from_state(state: Any) -> Dict[int, Tuple[Tensor, Tensor]]:
    """Validate a torchvision vgg19 (or vgg19.features) state dict; raise ValueError if not."""
    if not isinstance(state, Mapping):
        raise ValueError(f"the file holds a {type(state).__name__}, not a dict of tensors")
    features: Dict[str, Any] = {}
    with_prefix = any(isinstance(k, str) and k.startswith("features.") for k in state)
    for key, value in state.items():
        name = str(key)
        if with_prefix:
            if name.startswith("classifier."):
                continue  # the classification head of a full vgg19 state dict: not needed
            if not name.startswith("features."):
                raise ValueError(f"unexpected key {name!r}")
            name = name[len("features."):]
        features[name] = value
    expected = {f"{i}.{p}" for i in _VGG19_CONVS for p in ("weight", "bias")}
    unexpected = sorted(set(features) - expected)
    if unexpected:
        shown = ", ".join(repr(k) for k in unexpected[:3])
        raise ValueError(f"unexpected key(s) {shown}{' ...' if len(unexpected) > 3 else ''}")
    convs = {}
    prefix = "features." if with_prefix else ""
    for i in _USED_CONVS:
        c_in, c_out = _VGG19_CONVS[i]
        pair = []
        for part, shape in (("weight", (c_out, c_in, 3, 3)), ("bias", (c_out,))):
            name = f"{i}.{part}"
            if name not in features:
                raise ValueError(f"missing key {prefix + name!r}")
            tensor = features[name]
            if not isinstance(tensor, Tensor) or tuple(tensor.shape) != shape:
                found = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor)
                raise ValueError(f"{prefix + name!r} has shape {found}, expected {shape}")
            pair.append(tensor.detach().float())
        convs[i] = (pair[0], pair[1])
    return convs


def _random_convs() -> Dict[int, Tuple[Tensor, Tensor]]:
    """torchvision's VGG initialisation: kaiming normal (fan_out, relu), zero bias."""
    convs = {}
    for i in _USED_CONVS:
        c_in, c_out = _VGG19_CONVS[i]
        weight = nn.init.kaiming_normal_(
            torch.empty(c_out, c_in, 3, 3), mode="fan_out", nonlinearity="relu"
        )
        convs[i] = (weight, torch.zeros(c_out))
    return convs


class VGG19Features(nn.Module):
    """Frozen VGG19 (to relu5_1) returning the five feature maps [relu1_1 ... relu5_1].

    Input: ``B x 1 x H x W`` (grayscale, fastmri instance-normalised; see the module
    docstring for why it is fed unchanged), or ``B x H x W``. ``H`` and ``W`` should be
    multiples of 16 (four 2x2 max-pools, floor division as in torchvision).

    ``weights``: ``"imagenet"`` (default), a path to a local state dict, or ``None`` for
    random initialisation (torchvision's init). ``download``: whether ``"imagenet"`` may be
    downloaded when the cache file is absent.
    """

    def __init__(self, weights: WeightsArg = "imagenet", *, download: bool = True,
                 progress: bool = True):
        super().__init__()
        if weights is None:
            convs = _random_convs()
        else:
            convs = load_vgg19_state_dict(weights, download=download, progress=progress)
        tensors: List[Tensor] = []
        for i in _USED_CONVS:
            weight, bias = convs[i]
            if i == 0:
                # conv1_1 on a grayscale image repeated to RGB == summed-weight conv on it.
                weight = weight.sum(dim=1, keepdim=True)
            tensors += [weight.contiguous(memory_format=torch.channels_last), bias.contiguous()]
        # A plain list: not a parameter, not a buffer (see module docstring).
        self._tensors: List[Tensor] = tensors
        self.weights_source = "random" if weights is None else str(weights)
        self.training = False

    # -- frozen, always eval, moved by .to() but never saved -----------------------------
    def train(self, mode: bool = True) -> "VGG19Features":
        return super().train(False)

    def _apply(self, fn: Callable[[Tensor], Tensor], *args: Any, **kwargs: Any):
        self._tensors = [fn(t) for t in self._tensors]
        return super()._apply(fn, *args, **kwargs)

    @property
    def device(self) -> torch.device:
        return self._tensors[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self._tensors[0].dtype

    def conv_weights(self) -> Sequence[Tensor]:
        """The (read-only by convention) weight and bias tensors, conv1_1 folded to 1 input."""
        return tuple(self._tensors)

    def extra_repr(self) -> str:
        return f"layers={LAYER_NAMES}, weights={self.weights_source!r}, frozen"

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: Tensor) -> List[Tensor]:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(
                f"VGG19Features expects B x 1 x H x W or B x H x W, got {tuple(x.shape)}"
            )
        # channels_last (weights too): ~10% faster in float32 and ~20% under bf16 autocast for
        # a loss evaluation on CPU (oneDNN); the layout cuDNN prefers for bf16 as well.
        x = x.contiguous(memory_format=torch.channels_last)
        params = iter(self._tensors)
        out = []
        for layer_ops in _SLICES:
            for op in layer_ops:
                if op == "P":
                    x = F.max_pool2d(x, kernel_size=2, stride=2)
                else:
                    x = F.relu(F.conv2d(x, next(params), next(params), padding=1), inplace=True)
            out.append(x)
        return out

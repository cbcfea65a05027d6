"""Frozen VGG19 feature extractor for the contrastive loss (paper Sec. 3.3; docs/design.md,
*Contrastive loss*).

The network is torchvision's ``vgg19().features`` up to relu5_1, sliced at [0:2], [2:7],
[7:12], [12:21], [21:30] (relu1_1 ... relu5_1). Its ImageNet weights are torchvision's
``VGG19_Weights.IMAGENET1K_V1``: torch-hub cache file, download and SHA-256 check as
torchvision does them.

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
* **Frozen and never saved.** The torchvision network is held outside the module's children:
  its weights get no gradient, are not in any ``state_dict`` (they would add ~50 MB to every
  checkpoint and are re-loadable), are not counted as parameters, and DDP does not broadcast
  them each step. ``_apply`` is extended so that ``.to(device)``, ``.to(dtype)``, ``.cuda()``,
  ``.half()`` ... of any parent module still move and convert them. ``nn.DataParallel``
  replicas would not get per-device copies; Lightning 2 no longer offers DP, use DDP.
* **Precision**: nothing here disables autocast, so under ``torch.autocast(..., bfloat16)``
  the convolutions run in bf16; the loss reduces the feature distances in float32.
* **Layout**: activations and weights are channels_last (NHWC), see ``forward``.
* **Always in eval mode**: ``train()`` is a no-op (VGG19's feature part has no dropout or
  batch norm, so this only keeps the contract explicit).

Weights (``--vgg_weights``, see :func:`resolve_vgg19_weights`): ``"imagenet"``, ``"auto"``,
``"random"`` (or ``None``), or a path to a local state dict.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Union

import torch
from torch import Tensor, nn
from torch.hub import HASH_REGEX
from torchvision.models import VGG19_Weights, vgg19

from ..errors import UserError, one_line

log = logging.getLogger(__name__)

IMAGENET_WEIGHTS = VGG19_Weights.IMAGENET1K_V1
IMAGENET_URL: str = IMAGENET_WEIGHTS.url
IMAGENET_FILE_NAME = IMAGENET_URL.rsplit("/", 1)[-1]
# The first hex digits of the file's SHA-256, in its name (torch.hub's check_hash convention).
_IMAGENET_HASH_PREFIX = HASH_REGEX.search(IMAGENET_FILE_NAME).group(1)  # type: ignore[union-attr]

# Per socket operation, not for the whole download: an unreachable or silent server fails
# within this, a slow but live one keeps downloading.
DOWNLOAD_TIMEOUT_S = 20.0

VGG_WEIGHTS_CHOICES = ("auto", "imagenet", "random")
LAYER_NAMES = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
# End indices in vgg19().features of the five slices; each ends on a ReLU.
_SLICE_ENDS = (2, 7, 12, 21, 30)

WeightsArg = Union[str, "os.PathLike[str]", None]


class VGG19Weights(NamedTuple):
    """The VGG19 weights a run uses, as resolved by :func:`resolve_vgg19_weights`.

    ``kind``: ``"imagenet"`` (torchvision's file in the torch-hub cache), ``"file"`` (a
    user's state dict) or ``"random"``; ``path`` and ``sha256`` of the file read (None for
    random); ``warning``: why ``auto`` fell back to random weights, else None.
    """

    kind: str
    path: Optional[Path] = None
    sha256: Optional[str] = None
    warning: Optional[str] = None

    @property
    def record(self) -> Dict[str, Optional[str]]:
        """``{"vgg_weights", "path", "sha256"}``, JSON-ready (hyperparameters, metrics)."""
        path = None if self.path is None else str(self.path)
        return {"vgg_weights": self.kind, "path": path, "sha256": self.sha256}

    @property
    def argument(self) -> Optional[str]:
        """The weights argument that loads exactly these weights again, never downloading."""
        return {"imagenet": "imagenet", "random": None}.get(self.kind, str(self.path))


def imagenet_weights_path() -> Path:
    """Where torchvision keeps the ImageNet VGG19 weights.

    ``<torch.hub.get_dir()>/checkpoints/vgg19-dcbb9e9d.pth``; ``torch.hub.get_dir()`` follows
    ``TORCH_HOME`` (default ``~/.cache/torch/hub``).
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE_NAME


def imagenet_weights_available() -> bool:
    """Whether the ImageNet VGG19 weights are in the torch-hub cache (never downloads)."""
    return imagenet_weights_path().is_file()


def resolve_vgg19_weights(weights: WeightsArg = "imagenet", *,
                          progress: bool = True) -> VGG19Weights:
    """Find the VGG19 weights a choice names, downloading the ImageNet file if needed.

    * ``"imagenet"``: torchvision's file in the torch-hub cache; when absent, downloaded as
      torchvision does (SHA-256 prefix checked, written only when complete), with a
      :data:`DOWNLOAD_TIMEOUT_S` socket timeout. A failed download raises
      :class:`~clgnet_fastmri.errors.UserError` saying where to put the file.
    * ``"auto"``: the same, but a failed download gives random weights, with the reason and
      the fix logged as a warning and kept in ``warning``.
    * ``"random"`` or ``None``: random initialisation.
    * anything else: a path to a state dict of torchvision's ``vgg19`` or of its ``features``.

    A cached ImageNet file whose SHA-256 does not start with the prefix in its name is
    refused (UserError), in ``auto`` too: a damaged cache is not silently replaced by random
    weights.
    """
    if weights is None or weights == "random":
        return VGG19Weights("random")
    if weights in ("imagenet", "auto"):
        path = imagenet_weights_path()
        if not path.is_file():
            try:
                _download_imagenet(path, progress=progress)
            except UserError as exc:
                if weights == "imagenet":
                    raise
                message = (
                    f"the contrastive loss uses a randomly initialised VGG19, not ImageNet "
                    f"weights as in the paper: {exc}"
                )
                log.warning("WARNING: %s", message)
                return VGG19Weights("random", warning=message)
        digest = _sha256(path)
        if not digest.startswith(_IMAGENET_HASH_PREFIX):
            raise UserError(
                f"{path}: SHA-256 {digest[:16]}... does not match torchvision's "
                f"{IMAGENET_FILE_NAME}; delete it so that it is downloaded again, or replace "
                f"it with a good copy of {IMAGENET_URL}"
            )
        return VGG19Weights("imagenet", path, digest)
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be one of {VGG_WEIGHTS_CHOICES}, a path or None, "
                        f"not {weights!r}")
    path = weights_file(weights)
    return VGG19Weights("file", path, _sha256(path))


def weights_file(weights: Union[str, "os.PathLike[str]"]) -> Path:
    """The local file a weights argument names, which must exist (UserError if not).

    Also for settings that do not use the weights (``--alpha 0``): a typo is never ignored.
    """
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(
            f"{path}: VGG19 weights file not found; check the path, or use 'imagenet' "
            f"(torchvision's {IMAGENET_FILE_NAME} in the torch hub cache, "
            f"{imagenet_weights_path()}) or 'random'"
        )
    return path


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torch.hub opens its URL without a timeout: a firewall that drops packets would hang it.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds if previous is None else min(previous, seconds))
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download_imagenet(path: Path, *, progress: bool) -> None:
    """torchvision's download of IMAGENET1K_V1 into the cache; UserError on any failure."""
    fix = (
        f"download {IMAGENET_URL} on a machine with internet access and put it at {path} "
        "(the torch hub cache; TORCH_HOME moves it), or pass a local copy of that file as "
        "--vgg_weights PATH (weights=<path>; a state dict of torchvision's vgg19 or of its "
        "`features`), or use --vgg_weights random (weights=None; no ImageNet prior)"
    )
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            # What IMAGENET_WEIGHTS.get_state_dict(check_hash=True) does for a missing file,
            # without also reading the 548 MB file here.
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(
                IMAGENET_URL, str(path), _IMAGENET_HASH_PREFIX, progress=progress
            )
    except Exception as exc:  # no network, proxy, timeout, disk full, hash mismatch ...
        raise UserError(
            f"{path} does not exist and downloading it failed ({one_line(exc)}); {fix}"
        ) from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({one_line(exc)}); check its "
                        "permissions") from None
    return digest.hexdigest()


def _meta_features() -> nn.Sequential:
    """torchvision's ``vgg19().features`` on the meta device: shapes only, nothing allocated."""
    with torch.device("meta"):
        return vgg19(weights=None).features


def _read_state(resolved: VGG19Weights) -> Dict[str, Tensor]:
    """The state dict of ``features[:30]`` from a resolved ImageNet or local file."""
    if resolved.kind == "imagenet":
        fix = (f"delete it so that it is downloaded again, or replace it with a good copy of "
               f"{IMAGENET_URL}")
    else:
        fix = ("pass a state dict of torchvision's vgg19 or of its `features`, e.g. torch.save("
               "torchvision.models.vgg19(weights='IMAGENET1K_V1').state_dict(), path)")
    try:
        if resolved.kind == "imagenet":
            state = IMAGENET_WEIGHTS.get_state_dict(
                progress=False, check_hash=True, weights_only=True
            )
        else:
            state = torch.load(resolved.path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # weights_only refuses pickled modules/objects; torch.load also fails on truncated or
        # foreign files. Either way it is not a readable state dict.
        raise UserError(
            f"{resolved.path}: cannot be read as a VGG19 state dict ({one_line(exc)}); {fix}"
        ) from None
    try:
        features = _features_state(state)
    except ValueError as exc:
        raise UserError(f"{resolved.path}: not a VGG19 state dict ({exc}); {fix}") from None
    for name, tensor in features.items():
        # NaN features make the loss NaN at the first step, and the network with it.
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UserError(f"{resolved.path}: VGG19 weight {name} holds NaN or Inf values; "
                            f"{fix}")
    return features


def _features_state(state: Any) -> Dict[str, Tensor]:
    """Validate a torchvision vgg19 (or vgg19.features) state dict; raise ValueError if not."""
    if not isinstance(state, Mapping):
        raise ValueError(f"the file holds a {type(state).__name__}, not a dict of tensors")
    template = _meta_features()
    expected = {k: tuple(v.shape) for k, v in template.state_dict().items()}
    used = template[:_SLICE_ENDS[-1]].state_dict().keys()
    with_prefix = any(isinstance(k, str) and k.startswith("features.") for k in state)
    prefix = "features." if with_prefix else ""
    features: Dict[str, Any] = {}
    unexpected = []
    for key, value in state.items():
        name = str(key)
        if with_prefix and name.startswith("classifier."):
            continue  # the classification head of a full vgg19 state dict: not needed
        if name.startswith(prefix) and name[len(prefix):] in expected:
            features[name[len(prefix):]] = value
        else:
            unexpected.append(name)
    if unexpected:
        shown = ", ".join(repr(k) for k in sorted(unexpected)[:3])
        raise ValueError(f"unexpected key(s) {shown}{' ...' if len(unexpected) > 3 else ''}")
    out = {}
    for name in used:
        if name not in features:
            raise ValueError(f"missing key {prefix + name!r}")
        tensor = features[name]
        if not isinstance(tensor, Tensor) or tuple(tensor.shape) != expected[name]:
            found = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor)
            raise ValueError(f"{prefix + name!r} has shape {found}, expected {expected[name]}")
        out[name] = tensor
    return out


def _build_network(state: Optional[Dict[str, Tensor]]) -> nn.Sequential:
    """torchvision's features[:30] with ``state`` (or its random init), conv1_1 folded."""
    net = _meta_features()[:_SLICE_ENDS[-1]].to_empty(device="cpu")
    if state is None:
        for module in net.modules():
            if isinstance(module, nn.Conv2d):  # torchvision's VGG initialisation
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
    else:
        net.load_state_dict(state, strict=True)
    rgb = net[0]
    # conv1_1 on a grayscale image repeated to RGB == summed-weight conv on it.
    gray = nn.Conv2d(1, rgb.out_channels, rgb.kernel_size, padding=rgb.padding)
    with torch.no_grad():
        gray.weight.copy_(rgb.weight.sum(dim=1, keepdim=True))
        gray.bias.copy_(rgb.bias)
    net[0] = gray
    return net.requires_grad_(False).eval().to(memory_format=torch.channels_last)


class VGG19Features(nn.Module):
    """Frozen VGG19 (to relu5_1) returning the five feature maps [relu1_1 ... relu5_1].

    Input: ``B x 1 x H x W`` (grayscale, fastmri instance-normalised; see the module
    docstring for why it is fed unchanged), or ``B x H x W``. ``H`` and ``W`` should be
    multiples of 16 (four 2x2 max-pools, floor division as in torchvision).

    ``weights``: ``"imagenet"`` (default), ``"auto"``, ``"random"`` / ``None``, or a path to
    a local state dict, resolved by :func:`resolve_vgg19_weights` (which may download);
    :attr:`weights_used` and :attr:`weights_record` say what was loaded.
    """

    def __init__(self, weights: WeightsArg = "imagenet", *, progress: bool = True):
        super().__init__()
        self.weights_used = resolve_vgg19_weights(weights, progress=progress)
        state = None if self.weights_used.kind == "random" else _read_state(self.weights_used)
        net = _build_network(state)
        # Not a child module: not in state_dict, parameters() or DDP (see module docstring).
        object.__setattr__(self, "_net", net)
        self._slices: List[nn.Sequential] = [
            net[start:end] for start, end in zip((0,) + _SLICE_ENDS[:-1], _SLICE_ENDS)
        ]
        self.training = False

    @property
    def weights_record(self) -> Dict[str, Optional[str]]:
        """``{"vgg_weights": "imagenet" | "random" | "file", "path": ..., "sha256": ...}``."""
        return self.weights_used.record

    # -- frozen, always eval, moved by .to() but never saved -----------------------------
    def train(self, mode: bool = True) -> "VGG19Features":
        return super().train(False)

    def _apply(self, fn: Callable[[Tensor], Tensor], *args: Any, **kwargs: Any):
        self._net._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    @property
    def device(self) -> torch.device:
        return self._net[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._net[0].weight.dtype

    def conv_weights(self) -> List[Tensor]:
        """The frozen weight and bias tensors in order, conv1_1 folded to one input channel."""
        return list(self._net.parameters())

    def extra_repr(self) -> str:
        return f"layers={LAYER_NAMES}, weights={self.weights_used.kind!r}, frozen"

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: Tensor) -> List[Tensor]:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(
                f"VGG19Features expects B x 1 x H x W or B x H x W, got {tuple(x.shape)}"
            )
        # channels_last (weights too): oneDNN's fast path on CPU, and the layout cuDNN prefers
        # for bf16.
        x = x.contiguous(memory_format=torch.channels_last)
        out = []
        for layers in self._slices:
            x = layers(x)
            out.append(x)
        return out

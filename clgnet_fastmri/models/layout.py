"""Memory layouts chosen by measurement, once per process (as cuDNN's benchmark mode does).

Which layout is fastest for an FFT, a convolution's weight gradient or a layout copy depends
on the CPU, its libraries and the thread count: on an AMD EPYC (AVX2) torch's FFT over the
rows of a channels_last tensor beat a transpose to NCHW, and oneDNN's channels_last weight
gradient lost to NCHW copies; on an Intel Xeon (AVX-512) both go the other way
(BENCHMARKS.md, *Speed*, issue 28). So each choice point (``OPS``) names its candidates,
functions computing the same result up to float rounding, and the first call with a new key
(the choice point, the inputs' device, shapes, strides and dtype, the thread count, and the
kind of result asked for, e.g. the inverse FFT with or without its copy to channels_last) times
each candidate and keeps the fastest for the rest of the process (``chosen()`` lists the
choices and their times).

Candidates: ``"channels_last"`` (work on the channels_last tensor as it is) or ``"nchw"``
(on NCHW copies) for the Fourier units' FFTs and the 3x3 convolutions' weight gradients
(``sfl.py``), and for the FFTs of CPU tensors also ``"pocketfft"`` (``scipy.fft`` on the
channels_last rows: its output keeps the input's axis order, where torch's puts the
transformed axes innermost); ``"strided"`` (torch's strided copy) or ``"blocked"`` (one 2-D
transposing copy per sample, which torch runs in cache blocks) for the copies between NCHW
and channels_last. Fix choices with the environment variable ``CLGNET_LAYOUT`` or ``fixed(...)``:
comma-separated candidate names (for every choice point that has one) or ``op=name`` pairs,
e.g. ``CLGNET_LAYOUT=nchw,blocked`` or ``CLGNET_LAYOUT=rfft2=channels_last,irfft2=channels_last,
conv_weight_grad=nchw,transpose=strided`` (the layouts tuned on AMD EPYC before measurement);
choice points with nothing fixed are measured. No measurement under ``torch.compile`` or a
dispatch mode (such as the FLOP counter): the first candidate is used there.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

ENV = "CLGNET_LAYOUT"
OPS = ("rfft2", "irfft2", "conv_weight_grad", "transpose")
CANDIDATES = ("channels_last", "nchw", "pocketfft", "strided", "blocked")
_ROUNDS = 3  # timed calls per candidate, interleaved; the minimum counts

T = TypeVar("T")
Key = Tuple[object, ...]
#: (choice point, inputs, threads, variant) -> (candidate, {candidate: best seconds})
_chosen: Dict[Key, Tuple[str, Dict[str, float]]] = {}


def _parse(value: str) -> Tuple[str, ...]:
    items = tuple(n.strip() for n in value.split(",") if n.strip())
    for item in items:
        op, _, name = item.rpartition("=")
        if name not in CANDIDATES or (op and op not in OPS):
            raise ValueError(f"{ENV}: cannot fix {item!r}; give candidate names "
                             f"{CANDIDATES}, optionally as op=name with op in {OPS}")
    return items


#: The fixed choices: None until first needed, then those of ``CLGNET_LAYOUT``.
_fixed: Optional[Tuple[str, ...]] = None


def fixed_choices() -> Tuple[str, ...]:
    """The choices fixed now; the first call reads ``CLGNET_LAYOUT`` (``ValueError`` naming
    it for a value it cannot use)."""
    global _fixed
    if _fixed is None:
        _fixed = _parse(os.environ.get(ENV, ""))
    return _fixed


@contextlib.contextmanager
def fixed(*names: str) -> Iterator[None]:
    """Within the block, choice points with a candidate in ``names`` use it (no measurement)."""
    global _fixed
    saved, _fixed = _fixed, _parse(",".join(names))
    try:
        yield
    finally:
        _fixed = saved


def chosen() -> List[Dict[str, object]]:
    """The choices measured so far in this process, with each candidate's best seconds."""
    return [{"op": f"{key[0]} ({key[3]})" if key[3] else key[0],
             "shapes": [list(shape) for shape, *_ in key[1]],
             "threads": key[2], "chosen": name, "seconds": seconds}
            for key, (name, seconds) in _chosen.items()]


def fastest(op: str, like: Sequence[Tensor], candidates: Mapping[str, Callable[[], T]],
            variant: str = "") -> T:
    """The result of ``op``'s candidate for inputs ``like``: fixed, cached or measured now.
    ``variant`` names a kind of result the candidates give (timed and cached apart; fixed
    choices apply to every variant)."""
    for name, fn in candidates.items():
        if name in fixed_choices() or f"{op}={name}" in fixed_choices():
            return fn()
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return next(iter(candidates.values()))()
    key = (op, tuple((tuple(t.shape), t.stride(), t.dtype, t.device) for t in like),
           torch.get_num_threads(), variant)
    if key in _chosen:
        return candidates[_chosen[key][0]]()
    device = like[0].device
    seconds = {name: float("inf") for name in candidates}
    results: Dict[str, T] = {}
    for _ in range(_ROUNDS):
        for name, fn in candidates.items():
            _sync(device)
            start = time.perf_counter()
            results[name] = fn()
            _sync(device)
            seconds[name] = min(seconds[name], time.perf_counter() - start)
    best = min(seconds, key=seconds.__getitem__)
    _chosen[key] = (best, seconds)
    return results[best]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def transposed(src: Tensor) -> Tensor:
    """A contiguous copy of ``src``, a ``B x M x N`` view of ``B x N x M`` contiguous memory."""
    return fastest("transpose", [src], {"strided": src.contiguous,
                                        "blocked": lambda: _blocked_transpose(src)})


def _blocked_transpose(src: Tensor) -> Tensor:
    out = torch.empty(src.shape, dtype=src.dtype, device=src.device)
    # Pairs of float32 (complex64) move as one float64: torch's 2-D transposing copy (the
    # path a single `copy_` of a transposed matrix takes) is then half the element count.
    pairs = src.dtype == torch.complex64
    if pairs:
        src = torch.view_as_real(src).view(torch.float64).squeeze(-1)
    flat = torch.view_as_real(out).view(torch.float64).squeeze(-1) if pairs else out
    for sample, part in zip(flat, src):
        sample.copy_(part)
    return out


def nchw(x: Tensor) -> Tensor:
    """``B x C x H x W`` ``x`` in contiguous (NCHW) memory; a transposing copy of a
    channels_last ``x``."""
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous()
    b, c, h, w = x.shape
    return transposed(x.permute(0, 2, 3, 1).view(b, h * w, c).transpose(1, 2)).view(b, c, h, w)


def channels_last(x: Tensor) -> Tensor:
    """``B x C x H x W`` ``x`` in channels_last memory; a transposing copy of an NCHW ``x``."""
    if x.is_contiguous(memory_format=torch.channels_last) or not x.is_contiguous():
        return x.contiguous(memory_format=torch.channels_last)
    b, c, h, w = x.shape
    rows = transposed(x.view(b, c, h * w).transpose(1, 2))  # B x HW x C
    return rows.view(b, h, w, c).permute(0, 3, 1, 2)


def _space_to_depth(x: Tensor) -> Tensor:
    b, c, h, w = x.shape
    out = torch.empty(b, 4 * c, h // 2, w // 2, dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    blocks = x.permute(0, 2, 3, 1).unflatten(1, (h // 2, 2)).unflatten(3, (w // 2, 2))
    out.permute(0, 2, 3, 1).view(b, h // 2, w // 2, 2, 2, c).copy_(blocks.transpose(2, 3))
    return out


def _depth_to_space(z: Tensor) -> Tensor:
    b, c4, h, w = z.shape
    out = torch.empty(b, c4 // 4, 2 * h, 2 * w, dtype=z.dtype, device=z.device,
                      memory_format=torch.channels_last)
    blocks = z.permute(0, 2, 3, 1).unflatten(3, (2, c4 // 2))
    out.permute(0, 2, 3, 1).view(b, h, 2, w, c4 // 2).copy_(blocks.transpose(2, 3))
    return out


class _SpaceToDepth(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return _space_to_depth(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _depth_to_space(grad)  # a permutation: its adjoint is its inverse


class _DepthToSpace(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:
        return _depth_to_space(z)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _space_to_depth(grad)


def space_to_depth(x: Tensor) -> Tensor:
    """``pixel_unshuffle(x, 2)`` with its channels reordered: ``B x C x 2H x 2W ->
    B x 4C x H x W`` (channels_last), channel ``q * C + c`` = pixel ``q = 2i + j`` of the 2x2
    block of channel ``c`` (pixel_unshuffle's is ``c * 4 + q``).

    In this order a channels_last copy moves runs of 2C contiguous values (a row pair's
    pixels), at the cost of a plain copy; torch's channels_last pixel_unshuffle gathers single
    values and took 6x that on an Intel Xeon. The order is folded into the neighbouring
    convolutions' weights (``clgnet.Branch``).
    """
    return _SpaceToDepth.apply(x)


def depth_to_space(z: Tensor) -> Tensor:
    """Inverse of ``space_to_depth``: ``pixel_shuffle`` of channels ordered ``q * C + c``."""
    return _DepthToSpace.apply(z)

"""CLGNet: the reconstruction network of "Contrastive Learning for Local and Global Learning MRI
Reconstruction" (Q. Yi, J. Liu, L. Hu, F. Fang, G. Zhang), Sec. 3.1 and Fig. 2.

::

    F   = Net_pre(I)                                       Conv3x3(in -> C)
    O_w = IDWT(Conv3x3(SFRIR^4(Conv3x3(DWT(F)))))         wavelet branch, no skip (Eq. 3)
    O_s = Up(Conv3x3(SFRIR^4(Conv3x3(Down(F))))) + F      spatial branch, with skip
    O   = Net_out(concat[O_w, O_s])                        Conv3x3(2C -> out)   (Eq. 4)

Both branch bodies work at half resolution on C channels. With C = 32: 969,153 parameters
(paper 0.96 M), half of them in each branch. The formulas as written, and the choices the
paper leaves open, are ``reference.py``'s ``ReferenceCLGNet``; ``CLGNet`` is an exact rewrite
of it (same parameters and state dict) that computes in channels_last, folds the Haar
transforms into the branch convolutions and never concatenates (see ``Branch`` and
``_conv3x3_of_concat``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import layout
from .reference import GLOBAL_MODULES, ReferenceBranch, ReferenceCLGNet, make_body
from .sfl import SFRIR, _rows, conv3x3

__all__ = ["GLOBAL_MODULES", "Branch", "CLGNet", "make_body"]


class Branch(ReferenceBranch):
    """``ReferenceBranch`` with the Haar transforms applied to the convolutions' weights.

    A Haar DWT is PixelUnshuffle(2) followed by a fixed 4 x 4 mix of each 2x2 block
    (``DWT.block_matrix``), and the IDWT is that mix undone followed by PixelShuffle(2). The
    mixes are linear maps over channels, as are the convolutions next to them, so they are
    applied to the convolutions' weights (small) instead of the feature maps (large): the
    same maths as ``head(DWT(x))`` and ``IDWT(tail(z))``, at the cost of the spatial branch.
    Both branches shuffle with ``layout.space_to_depth``/``depth_to_space`` (the 2x2 blocks'
    channels in the order a copy moves fastest), that order too folded into the weights.
    """

    def forward(self, x: Tensor, blocks: Optional[Tensor] = None) -> Tensor:
        """``blocks``: ``layout.space_to_depth(x)`` if the caller has it already."""
        y = self._up_tail(self.body(self._head_down(x, blocks)))
        return y.add_(x) if self.skip else y  # y is a fresh tensor: in place is safe

    def _head_down(self, x: Tensor, blocks: Optional[Tensor]) -> Tensor:
        mix = None if self.dwt is None else self.dwt.block_matrix
        if self.dwt is not None and mix is None:  # a wavelet with overlapping filters
            return self.head(self.dwt(x))
        weight = self.head.weight
        if mix is None:  # head input channel c*4 + q (pixel_unshuffle) <- block channel q*C + c
            by_pixel = weight.unflatten(1, (-1, 4)).transpose(1, 2)
        else:  # head input channel k*C + c (subband k) <- block channel q*C + c
            by_pixel = torch.einsum("okcuv,kq->oqcuv", weight.unflatten(1, (4, -1)),
                                    mix.to(weight.dtype))
        if blocks is None:
            blocks = layout.space_to_depth(x)
        return conv3x3(blocks, by_pixel.reshape(weight.shape), self.head.bias)

    def _up_tail(self, z: Tensor) -> Tensor:
        mix = None if self.idwt is None else self.idwt.block_matrix
        if self.idwt is not None and mix is None:
            return self.idwt(self.tail(z))
        weight, bias = self.tail.weight, self.tail.bias
        if mix is None:  # block channel q*C + c <- tail output channel c*4 + q (pixel_shuffle)
            by_pixel = weight.unflatten(0, (-1, 4)).transpose(0, 1)
            bias = bias.view(-1, 4).t()
        else:  # block channel q*C + c <- tail output channel k*C + c (subband k)
            mix = mix.to(weight.dtype)
            by_pixel = torch.einsum("kciuv,kq->qciuv", weight.unflatten(0, (4, -1)), mix)
            bias = torch.einsum("kc,kq->qc", bias.unflatten(0, (4, -1)), mix)
        z = conv3x3(z, by_pixel.reshape(weight.shape), bias.reshape(-1))
        return layout.depth_to_space(z)


class CLGNet(ReferenceCLGNet):
    """CLGNet, ``B x in_chans x H x W -> B x out_chans x H x W`` for any H, W.

    The input is what fastmri's ``UnetDataTransform`` gives U-Net (the zero-filled magnitude
    image, normalised per instance); the output is the reconstruction in the same space.

    Args:
        in_chans: input channels.
        out_chans: output channels.
        chans: C, the feature width of both branches (paper: 32).
        num_sfrir: SFRIRs per branch (paper: 4).
        num_sfrb: SFRBs per SFRIR (paper: 3).
        wavelet: PyWavelets name of an orthogonal wavelet for the wavelet branch (paper:
            Haar). ``None`` is the "w/o wavelet" ablation: the spatial branch's module takes
            the wavelet branch's place (same parameter count).
        global_module: "fourier" (paper), "none" (the "w/o SFL" ablation, CLGNet_non),
            "self_attention" (CLGNet_SA) or "swin" (CLGNet_Tran), see ``make_body``.
        global_init: factor on the initial weights with which each SFL's fuse convolution
            reads its Fourier unit (1: PyTorch's default, as every other layer; 0: each SFL
            starts as its local path and learns how much global information to add, as a
            zero-initialised residual branch does; ``CLGNetModule`` trains with 0).
            Initialisation only: the network, its parameters and state dict are the same
            for every value. Why: ReLU leaves every spectral coefficient a positive mean,
            whose inverse FFT is a spike at pixel (0, 0), and the Conv1x1 is random, so at
            PyTorch's default every SFL starts by adding that spike and a random spectral
            map of its input to its output (measured, with the effect on learning, in
            BENCHMARKS.md, *256 x 256, sixth session*).
    """

    branch = Branch
    sfrir = SFRIR

    def forward(self, image: Tensor) -> Tensor:
        h, w = self.check_input(image)
        x = F.pad(image, (0, w % 2, 0, h % 2), mode="replicate") if h % 2 or w % 2 else image
        # channels_last (NHWC) throughout: oneDNN's convolutions are much faster in it on CPU.
        feats = self.net_pre(x).contiguous(memory_format=torch.channels_last)
        blocks = layout.space_to_depth(feats)  # the Down of both branches (see Branch)
        if branches_in_parallel(self, feats):
            branches = list(side_by_side(lambda: self.wavelet_branch(feats, blocks),
                                         lambda: self.spatial_branch(feats, blocks)))
        else:
            branches = [self.wavelet_branch(feats, blocks), self.spatial_branch(feats, blocks)]
        out = _conv3x3_of_concat(branches, self.net_out.weight, self.net_out.bias)
        return out[..., :h, :w].contiguous()


def branches_in_parallel(model: torch.nn.Module, feats: Tensor) -> bool:
    """Whether ``CLGNet.forward`` runs its two branches side by side (``side_by_side``): at
    CPU inference (eval mode, no autograd, no autocast, not compiled) with two threads or
    more. The branches are independent and equal in cost, and the Fourier units' FFTs and
    the small per-frequency products gain less from a second thread than convolutions do, so
    two branches on half the threads each finish sooner than one after the other on all of
    them (BENCHMARKS.md, *Speed*, issue 28, eleventh session). Training keeps one thread
    of control: autograd's CPU backward runs on one."""
    return (feats.device.type == "cpu" and not model.training and torch.get_num_threads() > 1
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling())


_worker: Optional[ThreadPoolExecutor] = None


def _forget_worker() -> None:
    global _worker
    _worker = None  # a forked child has no copy of the parent's worker thread


os.register_at_fork(after_in_child=_forget_worker)


def side_by_side(first: Callable[[], Tensor],
                 second: Callable[[], Tensor]) -> Tuple[Tensor, Tensor]:
    """``(first(), second())``, ``first`` on a worker thread with half of torch's intra-op
    threads and ``second`` on this one with the rest, both without autograd (and in
    inference mode if this thread is). torch's thread count and grad mode are per thread
    under OpenMP, so this thread's are restored after and the worker's are its own."""
    global _worker
    if _worker is None:
        _worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clgnet-branch")
    threads = torch.get_num_threads()
    inference = torch.is_inference_mode_enabled()

    def on_worker() -> Tensor:
        torch.set_num_threads(threads // 2)
        with torch.inference_mode(inference), torch.no_grad():
            return first()

    pending = _worker.submit(on_worker)
    torch.set_num_threads(threads - threads // 2)
    try:
        result = second()
    finally:
        torch.set_num_threads(threads)
        done = pending.result()  # also when ``second`` failed: the worker is never left busy
    return done, result


def _conv3x3_of_concat(inputs: List[Tensor], weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``F.conv2d(torch.cat(inputs, 1), weight, bias, padding=1)`` without the concatenation.

    Made for Net_out (C_out = 1 from 2C channels at full resolution), for which oneDNN's
    convolution is slow: each (output, tap) pair is first a matrix product over the input
    channels, ``taps[o*9 + 3u + v] = sum_c weight[o, c, u, v] * x[c]``, and a 3x3 convolution
    with one-hot weights then sums each output's 9 shifted tap maps (zero padding included).
    """
    out_chans = weight.shape[0]
    taps: Optional[Tensor] = None
    first = 0
    for x in inputs:
        c = x.shape[1]
        per_tap = weight[:, first:first + c].flatten(2).permute(1, 0, 2).reshape(c, -1)
        first += c
        rows = _rows(x)  # B x (H*W) x c
        if taps is None:
            taps = torch.matmul(rows, per_tap)
        else:  # (explicit dtype: in-place products do not autocast)
            per_tap = per_tap.to(taps.dtype).expand(rows.shape[0], -1, -1)
            taps.baddbmm_(rows.to(taps.dtype), per_tap)
    b, _, h, w = inputs[0].shape
    taps = taps.view(b, h, w, -1).permute(0, 3, 1, 2)
    one_hot = torch.eye(9, dtype=taps.dtype, device=taps.device).view(1, 9, 3, 3)
    return F.conv2d(taps, one_hot.expand(out_chans, -1, -1, -1), bias, padding=1,
                    groups=out_chans)

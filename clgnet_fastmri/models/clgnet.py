"""CLGNet: the reconstruction network of "Contrastive Learning for Local and Global Learning MRI
Reconstruction" (Q. Yi, J. Liu, L. Hu, F. Fang, G. Zhang), Sec. 3.1 and Fig. 2.

::

    F   = Net_pre(I)                                       Conv3x3(in -> C)
    O_w = IDWT(Conv3x3(SFRIR^4(Conv3x3(DWT(F)))))         wavelet branch, no skip (Eq. 3)
    O_s = Up(Conv3x3(SFRIR^4(Conv3x3(Down(F))))) + F      spatial branch, with skip
    O   = Net_out(concat[O_w, O_s])                        Conv3x3(2C -> out)   (Eq. 4)

Both branch bodies work at half resolution on C channels: the 4C channels of the DWT subbands
[LL, LH, HL, HH] (or of Down = PixelUnshuffle(2)) go through Conv3x3(4C -> C), the SFRIRs,
and Conv3x3(C -> 4C) back (Up = PixelShuffle(2)). With C = 32: 969,153 parameters (paper
0.96 M), half of them in each branch.

Choices the paper leaves open, besides those listed in ``sfl.py``:

- Down/Upsample of the spatial branch = PixelUnshuffle(2)/PixelShuffle(2): lossless, and the
  same shapes as DWT/IDWT, which is why the branches have equal parameter counts.
- Conv3x3(4C -> C) before and Conv3x3(C -> 4C) after the SFRIRs: Eq. 3 feeds the 4C-channel
  subbands to SFRIRs, which keep their width; these two convolutions set it to C.
- No long skip around the 4 SFRIRs (RCAN has one; Eq. 3 does not); Net_out is a single
  convolution with no activation, and there is no global input residual: the output is the
  image itself, in the input's (normalised) intensity space.
- Wavelet: Haar, PyWavelets' dwt2 convention (``dwt.py``).
- "w/o wavelet" ablation (Table 3): the wavelet branch is replaced by a second, separately
  parameterised copy of the spatial branch, skip included ("the module of spatial branch"),
  so the parameter count is unchanged.
- Image sizes: the network needs even H and W (DWT, PixelUnshuffle). Odd sizes are padded by
  one row/column at the bottom/right by replicating the edge, and the output is cropped back.
  Replication rather than zeros: the Fourier unit treats its input as periodic, and a
  zero row would add an edge the image does not have (0 is not the background level of a
  normalised image).
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import RSTB, SelfAttentionBlock
from .dwt import DWT, IDWT
from .sfl import SFRIR, _rows

#: Values of ``CLGNet(global_module=...)``: how each branch body learns global information.
GLOBAL_MODULES = ("fourier", "none", "self_attention", "swin")


def make_body(chans: int, num_sfrir: int, num_sfrb: int, global_module: str) -> nn.Sequential:
    """The per-branch body: ``num_sfrir`` SFRIRs of ``num_sfrb`` SFRBs at ``chans`` channels.

    ``global_module`` selects the global-information variant of the paper's Table 4:
    "fourier" (CLGNet: SFLs with the Fourier unit), "none" (CLGNet_non = "w/o SFL" of
    Table 3: the FFT pair removed, local information only), "self_attention" (CLGNet_SA: the
    "none" body with a global ``SelfAttentionBlock`` after each SFRIR) or "swin"
    (CLGNet_Tran: SwinIR's ``RSTB`` in place of each SFRIR; ``num_sfrb`` does not apply).
    Sizes and parameter counts of the last two: ``attention.py``.
    """
    if global_module not in GLOBAL_MODULES:
        raise ValueError(f"global_module must be one of {GLOBAL_MODULES}, got {global_module!r}")
    if global_module == "swin":
        return nn.Sequential(*[RSTB(chans) for _ in range(num_sfrir)])
    spectral = global_module == "fourier"
    blocks: List[nn.Module] = []
    for _ in range(num_sfrir):
        blocks.append(SFRIR(chans, num_sfrb, spectral))
        if global_module == "self_attention":
            blocks.append(SelfAttentionBlock(chans))
    return nn.Sequential(*blocks)


class Branch(nn.Module):
    """``Up(Conv3x3_C->4C(body(Conv3x3_4C->C(Down(x))))) [+ x]``: ``B x C x H x W`` in and out.

    Down/Up are DWT/IDWT (the wavelet branch, no skip) or, with ``dwt``/``idwt`` None,
    PixelUnshuffle(2)/PixelShuffle(2) (the spatial branch, with skip).

    A Haar DWT is PixelUnshuffle(2) followed by a fixed 4 x 4 mix of each 2x2 block
    (``DWT.block_matrix``), and the IDWT is that mix undone followed by PixelShuffle(2). The
    mixes are linear maps over channels, as are the convolutions next to them, so they are
    applied to the convolutions' weights (small) instead of the feature maps (large): the
    same maths as ``head(DWT(x))`` and ``IDWT(tail(z))``, at the cost of the spatial branch.
    """

    def __init__(self, chans: int, body: nn.Module, dwt: Optional[DWT], idwt: Optional[IDWT],
                 skip: bool):
        super().__init__()
        self.dwt = dwt
        self.head = nn.Conv2d(4 * chans, chans, kernel_size=3, padding=1)
        self.body = body
        self.tail = nn.Conv2d(chans, 4 * chans, kernel_size=3, padding=1)
        self.idwt = idwt
        self.skip = skip

    def forward(self, x: Tensor, blocks: Optional[Tensor] = None) -> Tensor:
        """``blocks``: ``pixel_unshuffle(x, 2)`` if the caller has it already."""
        y = self._up_tail(self.body(self._head_down(x, blocks)))
        return y.add_(x) if self.skip else y  # y is a fresh tensor: in place is safe

    def _head_down(self, x: Tensor, blocks: Optional[Tensor]) -> Tensor:
        mix = None if self.dwt is None else self.dwt.block_matrix
        if self.dwt is not None and mix is None:  # a wavelet with overlapping filters
            return self.head(self.dwt(x))
        weight = self.head.weight
        if mix is not None:
            # head input channel k*C + c (subband k) <- pixel_unshuffle channel c*4 + q
            o, c4 = weight.shape[:2]
            weight = torch.einsum("okcuv,kq->ocquv", weight.unflatten(1, (4, c4 // 4)),
                                  mix.to(weight.dtype)).reshape(weight.shape)
        if blocks is None:
            blocks = F.pixel_unshuffle(x, 2)
        return F.conv2d(blocks, weight, self.head.bias, padding=1)

    def _up_tail(self, z: Tensor) -> Tensor:
        mix = None if self.idwt is None else self.idwt.block_matrix
        if self.idwt is not None and mix is None:
            return self.idwt(self.tail(z))
        weight, bias = self.tail.weight, self.tail.bias
        if mix is not None:
            # pixel_shuffle channel c*4 + q <- tail output channel k*C + c (subband k)
            mix = mix.to(weight.dtype)
            weight = torch.einsum("kciuv,kq->cqiuv", weight.unflatten(0, (4, -1)), mix)
            weight = weight.reshape(self.tail.weight.shape)
            bias = torch.einsum("kc,kq->cq", bias.unflatten(0, (4, -1)), mix).reshape(-1)
        return F.pixel_shuffle(F.conv2d(z, weight, bias, padding=1), 2)

    def extra_repr(self) -> str:
        return f"skip={self.skip}"


class CLGNet(nn.Module):
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
    """

    def __init__(
        self,
        in_chans: int = 1,
        out_chans: int = 1,
        chans: int = 32,
        num_sfrir: int = 4,
        num_sfrb: int = 3,
        wavelet: Optional[str] = "haar",
        global_module: str = "fourier",
    ):
        super().__init__()
        self.in_chans, self.out_chans, self.chans = in_chans, out_chans, chans
        self.wavelet, self.global_module = wavelet, global_module

        def branch(kind: str) -> Branch:
            body = make_body(chans, num_sfrir, num_sfrb, global_module)
            if kind == "wavelet":
                return Branch(chans, body, DWT(wavelet), IDWT(wavelet), skip=False)
            return Branch(chans, body, None, None, skip=True)

        self.net_pre = nn.Conv2d(in_chans, chans, kernel_size=3, padding=1)
        self.wavelet_branch = branch("wavelet" if wavelet is not None else "spatial")
        self.spatial_branch = branch("spatial")
        self.net_out = nn.Conv2d(2 * chans, out_chans, kernel_size=3, padding=1)

    def forward(self, image: Tensor) -> Tensor:
        if image.dim() != 4 or image.shape[1] != self.in_chans:
            raise ValueError(
                f"CLGNet expects B x {self.in_chans} x H x W, got shape {tuple(image.shape)}"
            )
        h, w = image.shape[-2:]
        x = F.pad(image, (0, w % 2, 0, h % 2), mode="replicate") if h % 2 or w % 2 else image
        # channels_last (NHWC) throughout: oneDNN's convolutions are much faster in it on CPU.
        feats = self.net_pre(x).contiguous(memory_format=torch.channels_last)
        blocks = F.pixel_unshuffle(feats, 2)  # the Down of both branches (see Branch)
        branches = [self.wavelet_branch(feats, blocks), self.spatial_branch(feats, blocks)]
        out = _conv3x3_of_concat(branches, self.net_out.weight, self.net_out.bias)
        return out[..., :h, :w].contiguous()


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

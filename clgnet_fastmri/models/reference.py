"""CLGNet as the paper writes it (Sec. 3.1-3.2, Figs. 2-3): the formulas, one module each.

::

    FourierUnit(x) = irfft2(ReLU(BN(Conv1x1_2C->2C(rfft2(x)))))         global branch of the SFL
    SFL(x)         = Conv1x1_2C->C(concat[Conv3x3(x), FourierUnit(x)])  Eqs. 6-8
    SFRB(x)        = x + SFL(ReLU(SFL(x)))                              residual block
    SFRIR(x)       = x + Conv3x3(SFRB(...SFRB(x)))                      residual group
    Branch(F)      = Up(Conv3x3_C->4C(SFRIR^4(Conv3x3_4C->C(Down(F))))) [+ F]
    CLGNet(I)      = Net_out(concat[Branch_w(F), Branch_s(F)]),  F = Net_pre(I)   Eqs. 3-4

These modules are the specification: plain PyTorch, no rearrangement. ``sfl.py`` and
``clgnet.py`` hold the modules CLGNet trains with, an exact rewrite of these (the same maths
up to float rounding, tested against them in float64) that subclass them, so both have the
same parameter names and shapes and a state dict loads into either.

Choices the paper leaves open:

- Fourier unit = the spectral transform of Fast Fourier Convolution (Chi et al., NeurIPS 2020),
  which the paper follows: ``rfft2`` over (H, W) with ``norm="ortho"``; real and imaginary
  parts as 2C channels, interleaved per channel ``[re_0, im_0, re_1, im_1, ...]`` (FFC's
  order); Conv1x1 without bias, then BatchNorm and ReLU (FFC's); ``irfft2`` back to H x W.
- The paper's "w/o SFL" ablation removes only the FFT and IFFT: ``spectral=False`` keeps
  Conv1x1 -> BN -> ReLU, now on the C spatial channels, so the layer sees only a 3x3
  neighbourhood. This is what gives the paper's 0.81 M parameters.
- Convolutions: zero padding, bias (except the Fourier unit's Conv1x1, which BatchNorm
  follows), PyTorch's default initialisation, which ``global_init`` can scale on the fuse
  convolutions' global half; BatchNorm with PyTorch's defaults. No
  activation after an SFL; the ReLU inside the SFRB sits between its two SFLs (EDSR/RCAN
  residual block). Residuals are unscaled. SFRIR = RCAN's residual group with SFRBs in place
  of its channel-attention blocks.
- Down/Up: DWT/IDWT (``dwt.py``, Haar by default) in the wavelet branch, which has no skip;
  PixelUnshuffle(2)/PixelShuffle(2) in the spatial branch, which adds its input back. Both
  are lossless and give the same shapes, so the branches have equal parameter counts.
  Conv3x3(4C -> C) and Conv3x3(C -> 4C) set the SFRIRs' width to C. No long skip around
  the SFRIRs, no global input residual; Net_out is one convolution.
- "w/o wavelet" ablation: the wavelet branch is a second, separately parameterised copy of
  the spatial branch, skip included.
- Odd H or W: padded by one row/column at the bottom/right by edge replication, output
  cropped back (the Fourier unit treats its input as periodic: zeros would add an edge).
"""

from __future__ import annotations

from typing import List, Optional, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import RSTB, SelfAttentionBlock
from .dwt import DWT, IDWT

#: Values of ``CLGNet(global_module=...)``: how each branch body learns global information.
GLOBAL_MODULES = ("fourier", "none", "self_attention", "swin")


class ReferenceFourierUnit(nn.Module):
    """``irfft2(ReLU(BN(Conv1x1(rfft2(x)))))`` (paper Eq. 7), ``B x C x H x W`` in and out.

    Parameters: ``conv`` (2C x 2C x 1 x 1, no bias) and ``bn`` (2C channels), or C and C
    when ``spectral=False`` (the FFT pair removed: ``ReLU(BN(Conv1x1(x)))``).
    """

    def __init__(self, channels: int, spectral: bool = True):
        super().__init__()
        self.spectral = spectral
        width = 2 * channels if spectral else channels
        self.conv = nn.Conv2d(width, width, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x: Tensor) -> Tensor:
        if not self.spectral:
            return F.relu(self.bn(self.conv(x)))
        b, c, h, w = x.shape
        spec = torch.fft.rfft2(x, norm="ortho")
        z = torch.stack([spec.real, spec.imag], dim=2).reshape(b, 2 * c, h, -1)
        z = F.relu(self.bn(self.conv(z))).reshape(b, c, 2, h, -1)
        return torch.fft.irfft2(torch.complex(z[:, :, 0], z[:, :, 1]), s=(h, w), norm="ortho")


class ReferenceSFL(nn.Module):
    """Spatial and Fourier Layer: ``Conv1x1(concat[Conv3x3(x), FourierUnit(x)])`` (Eqs. 6-8).

    Parameters: ``local`` (Conv3x3 C->C), ``fourier``, ``fuse`` (Conv1x1 2C->C, input
    channels [local, global]).
    """

    fourier_unit: Type[nn.Module] = ReferenceFourierUnit

    def __init__(self, channels: int, spectral: bool = True):
        super().__init__()
        self.local = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.fourier = self.fourier_unit(channels, spectral)
        self.fuse = nn.Conv2d(2 * channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(torch.cat([self.local(x), self.fourier(x)], dim=1))


class ReferenceSFRB(nn.Module):
    """Spatial and Fourier Residual Block: ``x + SFL(ReLU(SFL(x)))``."""

    sfl: Type[nn.Module] = ReferenceSFL

    def __init__(self, channels: int, spectral: bool = True):
        super().__init__()
        self.sfl1 = self.sfl(channels, spectral)
        self.sfl2 = self.sfl(channels, spectral)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.sfl2(F.relu(self.sfl1(x)))


class ReferenceSFRIR(nn.Module):
    """SFRB in Residual: ``x + Conv3x3(SFRB(...SFRB(x)))`` (RCAN's residual group)."""

    sfrb: Type[nn.Module] = ReferenceSFRB

    def __init__(self, channels: int, num_sfrb: int = 3, spectral: bool = True):
        super().__init__()
        self.blocks = nn.Sequential(*[self.sfrb(channels, spectral) for _ in range(num_sfrb)])
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(self.blocks(x))


def make_body(chans: int, num_sfrir: int, num_sfrb: int, global_module: str,
              sfrir: Type[nn.Module] = ReferenceSFRIR) -> nn.Sequential:
    """The per-branch body: ``num_sfrir`` groups of ``num_sfrb`` SFRBs at ``chans`` channels.

    ``global_module`` selects the global-information variant of the paper's Table 4:
    "fourier" (CLGNet: SFLs with the Fourier unit), "none" (CLGNet_non = "w/o SFL" of
    Table 3: the FFT pair removed), "self_attention" (CLGNet_SA: the "none" body with a global
    ``SelfAttentionBlock`` after each SFRIR) or "swin" (CLGNet_Tran: SwinIR's ``RSTB`` in
    place of each SFRIR; ``num_sfrb`` does not apply). ``sfrir``: the SFRIR class.
    """
    if global_module not in GLOBAL_MODULES:
        raise ValueError(f"global_module must be one of {GLOBAL_MODULES}, got {global_module!r}")
    if global_module == "swin":
        return nn.Sequential(*[RSTB(chans) for _ in range(num_sfrir)])
    spectral = global_module == "fourier"
    blocks: List[nn.Module] = []
    for _ in range(num_sfrir):
        blocks.append(sfrir(chans, num_sfrb, spectral))
        if global_module == "self_attention":
            blocks.append(SelfAttentionBlock(chans))
    return nn.Sequential(*blocks)


def scale_global_init(net: nn.Module, factor: float) -> None:
    """Multiply the weights of every SFL's fuse convolution that read its Fourier unit
    (``fuse.weight[:, C:]``) by ``factor``; 1 leaves PyTorch's default initialisation, 0
    starts each SFL as its local path alone. SFLs without the FFTs ("w/o SFL") keep theirs."""
    if factor == 1.0:
        return
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, ReferenceSFL) and module.fourier.spectral:
                module.fuse.weight[:, module.local.out_channels:].mul_(factor)


class ReferenceBranch(nn.Module):
    """``Up(Conv3x3_C->4C(body(Conv3x3_4C->C(Down(x))))) [+ x]``, ``B x C x H x W`` in and out.

    Down/Up = ``dwt``/``idwt``, or PixelUnshuffle(2)/PixelShuffle(2) when they are None.
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

    def forward(self, x: Tensor) -> Tensor:
        y = self.head(self.dwt(x) if self.dwt is not None else F.pixel_unshuffle(x, 2))
        y = self.tail(self.body(y))
        y = self.idwt(y) if self.idwt is not None else F.pixel_shuffle(y, 2)
        return y + x if self.skip else y

    def extra_repr(self) -> str:
        return f"skip={self.skip}"


class ReferenceCLGNet(nn.Module):
    """CLGNet, ``B x in_chans x H x W -> B x out_chans x H x W``; arguments as ``CLGNet``."""

    branch: Type[ReferenceBranch] = ReferenceBranch
    sfrir: Type[nn.Module] = ReferenceSFRIR

    def __init__(
        self,
        in_chans: int = 1,
        out_chans: int = 1,
        chans: int = 32,
        num_sfrir: int = 4,
        num_sfrb: int = 3,
        wavelet: Optional[str] = "haar",
        global_module: str = "fourier",
        global_init: float = 1.0,
    ):
        super().__init__()
        self.in_chans, self.out_chans, self.chans = in_chans, out_chans, chans
        self.wavelet, self.global_module = wavelet, global_module

        def branch(wavelet: Optional[str]) -> ReferenceBranch:
            body = make_body(chans, num_sfrir, num_sfrb, global_module, self.sfrir)
            if wavelet is not None:
                return self.branch(chans, body, DWT(wavelet), IDWT(wavelet), skip=False)
            return self.branch(chans, body, None, None, skip=True)

        self.net_pre = nn.Conv2d(in_chans, chans, kernel_size=3, padding=1)
        self.wavelet_branch = branch(wavelet)
        self.spatial_branch = branch(None)
        self.net_out = nn.Conv2d(2 * chans, out_chans, kernel_size=3, padding=1)
        scale_global_init(self, global_init)

    def forward(self, image: Tensor) -> Tensor:
        h, w = self.check_input(image)
        x = F.pad(image, (0, w % 2, 0, h % 2), mode="replicate")
        feats = self.net_pre(x)
        out = self.net_out(torch.cat([self.wavelet_branch(feats), self.spatial_branch(feats)], 1))
        return out[..., :h, :w]

    def check_input(self, image: Tensor) -> torch.Size:
        """The input's ``(H, W)``; a ValueError for a shape other than ``B x in_chans x H x W``."""
        if image.dim() != 4 or image.shape[1] != self.in_chans:
            raise ValueError(
                f"CLGNet expects B x {self.in_chans} x H x W, got shape {tuple(image.shape)}"
            )
        return image.shape[-2:]

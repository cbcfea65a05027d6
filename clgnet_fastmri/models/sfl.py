"""The spatial-and-Fourier building blocks of CLGNet (paper Sec. 3.2 and Fig. 3).

One module per job, named as in the paper, from the inside out::

    FourierUnit(x) = irfft2(ReLU(BN(Conv1x1_2C->2C(rfft2(x)))))      global branch of the SFL
    SFL(x)         = Conv1x1_2C->C(concat[Conv3x3(x), FourierUnit(x)])  Eqs. 6-8
    SFRB(x)        = x + SFL(ReLU(SFL(x)))                              residual block
    SFRIR(x)       = x + Conv3x3(SFRB(...SFRB(x)))                      residual group (3 SFRBs)

All map ``B x C x H x W`` to ``B x C x H x W``. Choices the paper leaves open (each also noted
where it is made):

- Fourier unit = the spectral transform of Fast Fourier Convolution (Chi et al., NeurIPS 2020),
  which the paper follows: ``rfft2`` over (H, W) with ``norm="ortho"``; real and imaginary
  parts as 2C channels, interleaved per channel ``[re_0, im_0, re_1, im_1, ...]`` (FFC's
  order); Conv1x1 without bias, then BatchNorm and ReLU (FFC's); ``irfft2`` back to H x W.
  The FFTs always run in float32, also under autocast: cuFFT's half precision only takes
  power-of-two sizes, and a 320-pixel image gives 160-pixel branches.
- The paper's "w/o SFL" ablation removes only the FFT and IFFT: ``FourierUnit(spectral=False)``
  keeps Conv1x1 -> BN -> ReLU, now on the C spatial channels (no real/imaginary pair), so the
  layer sees only a 3x3 neighbourhood. This is what gives the paper's 0.81 M parameters.
- Convolutions: zero padding, bias (except the Fourier unit's Conv1x1, which BatchNorm
  follows), PyTorch's default initialisation; BatchNorm with PyTorch's defaults (momentum 0.1,
  eps 1e-5, affine). No activation after an SFL; the ReLU inside the
  SFRB sits between its two SFLs (EDSR/RCAN residual block). Residuals are unscaled.
- SFRIR = RCAN's residual group with SFRBs in place of its channel-attention blocks: a 3x3
  conv closes the group, and the group input is added back.

Implementation notes (the maths above is unchanged; ``tests/test_clgnet.py`` checks each
module against the literal formula). Activations are channels_last (NHWC), which makes
oneDNN's 3x3 convolutions ~2x faster on CPU. 1x1 convolutions run as matrix products on the
rows of that layout. ``Conv1x1(concat[local, global])`` is never concatenated: its local half
is folded into the 3x3 convolution's weights (one linear map after another is one linear map)
and its global half is added onto that convolution's output in place. The FFT pair is written
out as autograd functions whose backward is half the work of torch's own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_CHANNELS_LAST = torch.channels_last


def _rows(x: Tensor) -> Tensor:
    """``B x C x H x W -> B x (H*W) x C``: a view for channels_last and for NCHW tensors."""
    b, c = x.shape[:2]
    if x.is_contiguous(memory_format=_CHANNELS_LAST):
        return x.permute(0, 2, 3, 1).reshape(b, -1, c)
    return x.flatten(2).transpose(1, 2)  # transposed rows: the matrix products take it as is


def _add_pointwise_conv_(out: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """``out += Conv1x1(x)`` with a ``Cout x Cin`` weight and no bias; ``out`` channels_last."""
    rows = out.permute(0, 2, 3, 1).view(out.shape[0], -1, out.shape[1])
    rows.baddbmm_(_rows(x).to(out.dtype), weight.t().to(out.dtype).expand(out.shape[0], -1, -1))
    return out


def _float32_matmul_is_ieee() -> bool:
    """Whether float32 CPU matrix products are exact IEEE float32 products (torch's default).

    Users may lower them to bfloat16/TF32 (``torch.set_float32_matmul_precision`` or
    ``torch.backends.mkldnn.matmul.fp32_precision``); a product with the identity is then no
    longer a copy.
    """
    precision = getattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision", None)
    if precision is not None:
        return precision in ("none", "ieee")
    return torch.get_float32_matmul_precision() == "highest"  # torch < 2.9


def _to_nchw(x: Tensor) -> Tensor:
    """A contiguous (NCHW) copy of a channels_last tensor, as the FFT wants its input.

    On CPU torch's generic strided copy is slow for this transpose of the ``(H*W) x C`` rows;
    a matrix product with the identity (exact in IEEE float32) is ~5x faster, and torch's 2D
    transpose kernel ~3x, so one of those is used.
    """
    if x.is_contiguous() or x.device.type != "cpu" or not x.is_contiguous(
        memory_format=_CHANNELS_LAST
    ):
        return x.contiguous()
    b, c, h, w = x.shape
    columns = _rows(x).transpose(1, 2)  # B x C x (H*W), a transposed view
    if x.dtype == torch.float64 or (x.dtype == torch.float32 and _float32_matmul_is_ieee()):
        eye = torch.eye(c, dtype=x.dtype, device=x.device)
        return torch.bmm(eye.expand(b, c, c), columns).view(b, c, h, w)
    out = x.new_empty(b, c, h * w)
    for i in range(b):
        out[i] = columns[i]
    return out.view(b, c, h, w)


def _column_scale(like: Tensor, width: int, value: float) -> Tensor:
    """Factors for the ``width // 2 + 1`` columns of a half spectrum: ``value`` for those whose
    mirror images rfft2 leaves out, 1 for column 0 and (even ``width``) the Nyquist column."""
    scale = like.real.new_full((width // 2 + 1,), value)
    scale[0] = 1.0
    if width % 2 == 0:
        scale[-1] = 1.0
    return scale


class _SpectrumRows(torch.autograd.Function):
    """``rfft2(x, norm="ortho")`` of a channels_last ``B x C x H x W`` image, returned as
    ``B x H x W//2+1 x C`` (one row of C complex values per frequency).

    Written out (with ``_ImageFromRows``) for its backward: torch differentiates rfft2 with a
    complex inverse FFT of the zero-padded spectrum and copies between layouts on the way; the
    adjoint is one inverse real FFT of the half spectrum with its interior columns halved.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.size = x.shape[-2:]
        return torch.fft.rfft2(_to_nchw(x), norm="ortho").permute(0, 2, 3, 1).contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        h, w = ctx.size
        grad = grad * _column_scale(grad, w, 0.5)[:, None]  # columns are dim 2 of the rows
        image = torch.fft.irfftn(grad, s=(h, w), dim=(1, 2), norm="ortho")  # B x H x W x C
        return image.permute(0, 3, 1, 2).contiguous(memory_format=_CHANNELS_LAST)


class _ImageFromRows(torch.autograd.Function):
    """Inverse of ``_SpectrumRows``: ``irfft2`` of ``B x H x W//2+1 x C`` complex rows, as a
    ``B x C x H x W`` image (NCHW memory)."""

    @staticmethod
    def forward(ctx, rows: Tensor, h: int, w: int) -> Tensor:
        ctx.width = w
        return torch.fft.irfftn(rows, s=(h, w), dim=(1, 2), norm="ortho").permute(0, 3, 1, 2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        spec = torch.fft.rfft2(_to_nchw(grad), norm="ortho")
        spec = spec * _column_scale(spec, ctx.width, 2.0)
        return spec.permute(0, 2, 3, 1).contiguous(), None, None


class FourierUnit(nn.Module):
    """The SFL's global branch (paper Eq. 7): ``irfft2(ReLU(BN(Conv1x1(rfft2(x)))))``.

    ``B x C x H x W -> B x C x H x W`` (float32 out; any H, W). One value in the spectrum
    depends on every pixel, so one output pixel depends on the whole input (a global receptive
    field). ``spectral=False`` drops the FFT pair (the paper's "w/o SFL" ablation): a
    pointwise Conv1x1 -> BN -> ReLU on the C spatial channels.

    Parameters: ``conv`` (2C x 2C x 1 x 1, no bias) and ``bn`` (2C channels), or C instead
    of 2C when not spectral. Spectral channel order: ``[re_0, im_0, re_1, im_1, ...]``.
    """

    def __init__(self, channels: int, spectral: bool = True):
        super().__init__()
        self.spectral = spectral
        width = 2 * channels if spectral else channels
        self.conv = nn.Conv2d(width, width, kernel_size=1, bias=False)  # BN follows: no bias
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x: Tensor) -> Tensor:
        if not self.spectral:
            b, c, h, w = x.shape
            rows = self._conv_bn_relu(_rows(x).reshape(-1, c))
            return rows.view(b, h, w, c).permute(0, 3, 1, 2)  # channels_last view
        b, c, h, w = x.shape
        # float32 for half/bfloat16 inputs (autocast), float64 stays float64.
        real = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            spec = _SpectrumRows.apply(x.to(real))  # B x H x W//2+1 x C
            # One row per frequency, C complex values = 2C interleaved reals (FFC's order).
            rows = torch.view_as_real(spec).view(-1, 2 * c)
        rows = self._conv_bn_relu(rows)
        with torch.autocast(x.device.type, enabled=False):
            spec = torch.view_as_complex(rows.to(real).view(b, h, -1, c, 2))
            return _ImageFromRows.apply(spec, h, w)

    def _conv_bn_relu(self, rows: Tensor) -> Tensor:
        """Conv1x1 -> BN -> ReLU on an ``N x width`` matrix (one row per pixel/frequency)."""
        weight = self.conv.weight.flatten(1)
        bn = self.bn
        if bn.training or bn.running_mean is None:
            # Batch statistics over all rows = over (B, H, W) as BatchNorm2d would take them.
            rows = bn(F.linear(rows, weight).view(*rows.shape, 1, 1)).view(rows.shape)
        else:
            # Running statistics: BN is an affine map, folded into the product.
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            shift = bn.bias - bn.running_mean * scale
            rows = torch.addmm(shift, rows, (weight * scale[:, None]).t())
        return rows.relu_()


class SFL(nn.Module):
    """Spatial and Fourier Layer (paper Eqs. 6-8, Fig. 3): local and global branches fused.

    ``SFL(x) = Conv1x1(concat[Conv3x3(x), FourierUnit(x)])``, ``B x C x H x W`` in and out.
    Parameters: ``local`` (Conv3x3 C->C), ``fourier`` (``FourierUnit``), ``fuse``
    (Conv1x1 2C->C, input channels [local, global]). ``spectral=False``: the "w/o SFL"
    ablation (see ``FourierUnit``).
    """

    def __init__(self, channels: int, spectral: bool = True):
        super().__init__()
        self.local = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.fourier = FourierUnit(channels, spectral)
        self.fuse = nn.Conv2d(2 * channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=_CHANNELS_LAST)
        fuse_local, fuse_global = self.fuse.weight.flatten(1).chunk(2, dim=1)
        # fuse_local(local(x)) + fuse.bias is itself one 3x3 convolution:
        weight = torch.mm(fuse_local, self.local.weight.flatten(1)).view_as(self.local.weight)
        bias = torch.addmv(self.fuse.bias, fuse_local, self.local.bias)
        out = F.conv2d(x, weight.contiguous(memory_format=_CHANNELS_LAST), bias, padding=1)
        return _add_pointwise_conv_(out, self.fourier(x), fuse_global)


class SFRB(nn.Module):
    """Spatial and Fourier Residual Block: ``x + SFL(ReLU(SFL(x)))`` (paper Fig. 3)."""

    def __init__(self, channels: int, spectral: bool = True):
        super().__init__()
        self.sfl1 = SFL(channels, spectral)
        self.sfl2 = SFL(channels, spectral)

    def forward(self, x: Tensor) -> Tensor:
        # The SFLs' outputs are fresh tensors that backward does not need: in place is safe.
        return self.sfl2(self.sfl1(x).relu_()).add_(x)


class SFRIR(nn.Module):
    """SFRB in Residual: ``x + Conv3x3(SFRB(...SFRB(x)))`` (paper Fig. 3; RCAN's group)."""

    def __init__(self, channels: int, num_sfrb: int = 3, spectral: bool = True):
        super().__init__()
        self.blocks = nn.Sequential(*[SFRB(channels, spectral) for _ in range(num_sfrb)])
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.blocks(x)).add_(x)

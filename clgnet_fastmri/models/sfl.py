"""The SFL blocks CLGNet trains with: an exact rewrite of ``reference.py``'s.

``FourierUnit``, ``SFL``, ``SFRB`` and ``SFRIR`` subclass their ``Reference*`` modules (same
parameters, so the same state dict) and compute the same maths, up to float rounding, in a
faster form:

- Activations are channels_last (NHWC), in which oneDNN's 3x3 convolutions are fastest on
  CPU; 1x1 convolutions run as matrix products on the rows of that layout.
- ``Conv1x1(concat[local, global])`` is never concatenated: its local half is folded into the
  3x3 convolution's weights (one linear map after another is one linear map) and its global
  half is added onto that convolution's output in place.
- The spectrum is held as ``B x H x W//2+1 x C`` rows (the 2C reals of a frequency in one
  row, for the 1x1 product); the FFTs run on the rows directly, on NCHW copies, or (CPU) in
  pocketfft (``scipy.fft``), which returns rows for rows, whichever ``layout.fastest``
  measured fastest on this machine; the copies between NCHW and channels_last are
  ``layout``'s. FFTs always run in float32 (also under autocast and for half-precision
  models: cuFFT's half precision only takes power-of-two sizes, and a 320-pixel image gives
  160-pixel branches). The FFT pair is written out as autograd
  functions whose backward is half the work of torch's own.
- In training, a Fourier unit's Conv1x1 -> BN -> ReLU keeps only its input for the backward
  and recomputes the rest there (``_PointwiseBNReLU``): one matrix product more per unit, two
  spectrum-sized tensors fewer held from forward to backward.
"""

from __future__ import annotations

from typing import Optional, Tuple

import scipy.fft
import torch
import torch.nn.functional as F
from torch import Tensor

from . import layout
from .reference import ReferenceFourierUnit, ReferenceSFL, ReferenceSFRB, ReferenceSFRIR

_CHANNELS_LAST = torch.channels_last
_convolution_backward = torch.ops.aten.convolution_backward
_GEOMETRY = ([1, 1], [1, 1], [1, 1], False, [0, 0], 1)  # stride, padding, dilation, ...


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


class _Conv3x3(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, padding=1)`` whose weight gradient is taken from the
    channels_last tensors or from NCHW copies of them, whichever ``layout.fastest`` measured
    faster: on an AMD EPYC oneDNN's channels_last weight gradient took longer than the copies
    and the NCHW one together, on an Intel Xeon (AVX-512) half as long."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _convolution_backward(grad, x, weight, None, *_GEOMETRY,
                                           [True, False, False])[0]
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            wanted = [False, ctx.needs_input_grad[1], ctx.has_bias]

            def weight_grad(grad: Tensor, x: Tensor, weight: Tensor) -> Tuple[Tensor, Tensor]:
                return _convolution_backward(grad, x, weight, [weight.shape[0]], *_GEOMETRY,
                                             wanted)[1:]

            grad_w, grad_b = layout.fastest("conv_weight_grad", [grad, x, weight], {
                "channels_last": lambda: weight_grad(grad, x, weight),
                "nchw": lambda: weight_grad(layout.nchw(grad), layout.nchw(x),
                                            weight.contiguous()),
            })
        return grad_x, grad_w, grad_b


def conv3x3(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=1)``; for channels_last CPU training without
    autocast through ``_Conv3x3`` (same gradient, its weight gradient in the layout measured
    faster)."""
    if (x.device.type == "cpu" and torch.is_grad_enabled() and x.dim() == 4
            and x.is_contiguous(memory_format=_CHANNELS_LAST)
            and not torch.is_autocast_enabled("cpu")):
        return _Conv3x3.apply(x, weight, bias)
    return F.conv2d(x, weight, bias, padding=1)


def _column_scale(like: Tensor, width: int, value: float) -> Tensor:
    """Factors for the ``width // 2 + 1`` columns of a half spectrum: ``value`` for those whose
    mirror images rfft2 leaves out, 1 for column 0 and (even ``width``) the Nyquist column."""
    scale = like.real.new_full((width // 2 + 1,), value)
    scale[0] = 1.0
    if width % 2 == 0:
        scale[-1] = 1.0
    return scale[:, None]  # columns are dim 2 of B x H x W//2+1 x C rows


def spectrum_rows(x: Tensor) -> Tensor:
    """``rfft2(x, norm="ortho")`` of ``B x C x H x W`` ``x`` as contiguous ``B x H x W//2+1 x C``
    rows. Candidates: torch's FFT over dims (1, 2) of the channels_last rows, or ``rfft2`` of
    an NCHW copy (torch's CPU FFT returns NCHW memory in both, copied into rows after), or
    (CPU) pocketfft over the rows, which writes rows."""
    candidates = {
        "channels_last": lambda: _as_rows(torch.fft.rfftn(
            x.permute(0, 2, 3, 1), dim=(1, 2), norm="ortho").permute(0, 3, 1, 2)),
        "nchw": lambda: _as_rows(torch.fft.rfft2(layout.nchw(x), norm="ortho")),
    }
    if _on_host(x):
        candidates["pocketfft"] = lambda: torch.from_numpy(scipy.fft.rfftn(
            x.permute(0, 2, 3, 1).numpy(force=True), axes=(1, 2), norm="ortho",
            workers=torch.get_num_threads()))
    return layout.fastest("rfft2", [x], candidates)


def image_of_rows(spec: Tensor, width: int, to_channels_last: bool) -> Tensor:
    """``irfft2(s=(H, width), norm="ortho")`` of contiguous ``B x H x W//2+1 x C`` rows,
    ``B x C x H x width`` out. Candidates as ``spectrum_rows``'s. torch's CPU FFT returns NCHW
    memory for either input, pocketfft channels_last; ``to_channels_last`` adds the copy to
    channels_last where one is needed (timed with each candidate). Training wants it: the
    fuse product's rows and the gradient of the channels_last SFL input are channels_last,
    and an NCHW tensor there makes a batched product over transposed rows, autograd's sum of
    the input's two gradients and the ReLU's backward strided loops over mixed layouts, which
    cost more than the copy; at inference the product over transposed rows did not
    (BENCHMARKS.md, *Speed*, issue 28, eighth session)."""
    size = (spec.shape[1], width)

    def out(image: Tensor) -> Tensor:
        return layout.channels_last(image) if to_channels_last else image

    candidates = {
        "channels_last": lambda: out(torch.fft.irfftn(
            spec, s=size, dim=(1, 2), norm="ortho").permute(0, 3, 1, 2)),
        "nchw": lambda: out(torch.fft.irfft2(
            layout.nchw(spec.permute(0, 3, 1, 2)), s=size, norm="ortho")),
    }
    if _on_host(spec):
        candidates["pocketfft"] = lambda: torch.from_numpy(scipy.fft.irfftn(
            spec.numpy(force=True), s=size, axes=(1, 2), norm="ortho",
            workers=torch.get_num_threads())).permute(0, 3, 1, 2)
    return layout.fastest("irfft2", [spec], candidates,
                          variant="channels_last out" if to_channels_last else "")


def _on_host(x: Tensor) -> bool:
    """Whether pocketfft (NumPy arrays) can take ``x``: a CPU tensor outside ``torch.compile``,
    which cannot trace into it."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def _as_rows(spec: Tensor) -> Tensor:
    """``B x C x H x F`` -> contiguous ``B x H x F x C``."""
    return layout.channels_last(spec).permute(0, 2, 3, 1)


class _SpectrumRows(torch.autograd.Function):
    """``spectrum_rows`` (``rfft2(norm="ortho")``, ``B x C x H x W`` real in,
    ``B x H x W//2+1 x C`` complex rows out), one row of C complex values per frequency.

    Written out (with ``_ImageRows``) for its backward: torch differentiates rfft2 with a
    complex inverse FFT of the zero-padded spectrum; the adjoint is one inverse real FFT of the
    half spectrum with its interior columns halved.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.width = x.shape[3]
        return spectrum_rows(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        return image_of_rows(grad * _column_scale(grad, ctx.width, 0.5), ctx.width, True)


class _ImageRows(torch.autograd.Function):
    """Inverse of ``_SpectrumRows``: ``irfft2`` of ``B x H x W//2+1 x C`` complex rows,
    ``B x C x H x W`` real out (channels_last if ``to_channels_last``)."""

    @staticmethod
    def forward(ctx, spec: Tensor, width: int, to_channels_last: bool) -> Tensor:
        ctx.width = width
        return image_of_rows(spec, width, to_channels_last)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        spec = spectrum_rows(grad)
        return spec.mul_(_column_scale(spec, ctx.width, 2.0)), None, None


class _PointwiseBNReLU(torch.autograd.Function):
    """``relu(BN(rows @ weight.t()))``, BatchNorm with batch statistics over the ``N`` rows,
    for ``N x width`` rows; updates the running statistics as ``BatchNorm2d`` does.

    Saves only ``rows`` (and per-channel statistics): the backward recomputes the product,
    one matrix product, instead of keeping BN's input and output, two more tensors of the
    spectrum's size in every Fourier unit, the largest share of CLGNet's training memory.
    """

    @staticmethod
    def forward(ctx, rows: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor,
                running_mean: Optional[Tensor], running_var: Optional[Tensor],
                momentum: float, eps: float) -> Tensor:
        out, mean, invstd = torch.native_batch_norm(
            torch.mm(rows, weight.t()), gamma, beta, running_mean, running_var, True,
            momentum, eps)
        ctx.save_for_backward(rows, weight, gamma, beta, mean, invstd)
        ctx.eps = eps
        return out.relu_()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        rows, weight, gamma, beta, mean, invstd = ctx.saved_tensors
        z = torch.mm(rows, weight.t())
        scale = gamma * invstd
        grad = torch.ops.aten.threshold_backward(
            grad, torch.addcmul(beta - mean * scale, z, scale), 0)
        grad_z, grad_gamma, grad_beta = torch.ops.aten.native_batch_norm_backward(
            grad, z, gamma, None, None, mean, invstd, True, ctx.eps,
            [True, ctx.needs_input_grad[2], ctx.needs_input_grad[3]])
        grad_rows = torch.mm(grad_z, weight) if ctx.needs_input_grad[0] else None
        grad_weight = torch.mm(grad_z.t(), rows) if ctx.needs_input_grad[1] else None
        return grad_rows, grad_weight, grad_gamma, grad_beta, None, None, None, None


def _batch_norm_factor(bn: torch.nn.modules.batchnorm._BatchNorm) -> float:
    """The running-statistics update factor ``bn`` would use in this training call (and
    ``num_batches_tracked`` counted, as its own forward counts it)."""
    if not bn.track_running_stats:
        return 0.0
    bn.num_batches_tracked.add_(1)
    return bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)


class FourierUnit(ReferenceFourierUnit):
    """``ReferenceFourierUnit`` on channels_last rows: one row per pixel or frequency.

    ``B x C x H x W -> B x C x H x W`` in float32 (float64 for float64 inputs), channels_last
    (when grad is disabled, the spectral unit's output is in the layout its inverse FFT gives,
    see ``image_of_rows``). Spectral channel order ``[re_0, im_0, re_1, im_1, ...]`` is the
    interleaving of ``view_as_real``, so the 2C reals of a frequency are one row.
    """

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if not self.spectral:
            rows = self._conv_bn_relu(_rows(x).reshape(-1, c))
            return rows.view(b, h, w, c).permute(0, 3, 1, 2)
        real = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            spec = _SpectrumRows.apply(x.to(real))  # B x H x W//2+1 x C
            rows = torch.view_as_real(spec).view(-1, 2 * c)
        rows = self._conv_bn_relu(rows.to(x.dtype))
        with torch.autocast(x.device.type, enabled=False):
            spec = torch.view_as_complex(rows.to(real).view(b, h, -1, c, 2))
            return _ImageRows.apply(spec, w, torch.is_grad_enabled())

    def _conv_bn_relu(self, rows: Tensor) -> Tensor:
        """Conv1x1 -> BN -> ReLU on an ``N x width`` matrix (one row per pixel/frequency)."""
        weight = self.conv.weight.flatten(1)
        bn = self.bn
        if (bn.training and bn.affine and torch.is_grad_enabled()
                and not torch.is_autocast_enabled(rows.device.type)):
            return _PointwiseBNReLU.apply(rows, weight, bn.weight, bn.bias, bn.running_mean,
                                          bn.running_var, _batch_norm_factor(bn), bn.eps)
        if bn.training or bn.running_mean is None:
            # Batch statistics over all rows = over (B, H, W) as BatchNorm2d would take them.
            rows = bn(F.linear(rows, weight).view(*rows.shape, 1, 1)).view(rows.shape)
        else:
            # Running statistics: BN is an affine map, folded into the product.
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            shift = bn.bias - bn.running_mean * scale
            rows = torch.addmm(shift, rows, (weight * scale[:, None]).t())
        return rows.relu_()


class SFL(ReferenceSFL):
    """``ReferenceSFL`` with the fuse convolution's local half folded into the 3x3 weights
    and its global half added in place (no concatenation)."""

    fourier_unit = FourierUnit

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=_CHANNELS_LAST)
        fuse_local, fuse_global = self.fuse.weight.flatten(1).chunk(2, dim=1)
        # fuse_local(local(x)) + fuse.bias is itself one 3x3 convolution:
        weight = torch.mm(fuse_local, self.local.weight.flatten(1)).view_as(self.local.weight)
        bias = torch.addmv(self.fuse.bias, fuse_local, self.local.bias)
        out = conv3x3(x, weight.contiguous(memory_format=_CHANNELS_LAST), bias)
        return _add_pointwise_conv_(out, self.fourier(x), fuse_global)


class SFRB(ReferenceSFRB):
    """``ReferenceSFRB``, its ReLU and residual sum in place."""

    sfl = SFL

    def forward(self, x: Tensor) -> Tensor:
        # The SFLs' outputs are fresh tensors that backward does not need: in place is safe.
        return self.sfl2(self.sfl1(x).relu_()).add_(x)


class SFRIR(ReferenceSFRIR):
    """``ReferenceSFRIR``, its residual sum in place."""

    sfrb = SFRB

    def forward(self, x: Tensor) -> Tensor:
        return conv3x3(self.blocks(x), self.conv.weight, self.conv.bias).add_(x)

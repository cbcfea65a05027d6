"""Single-level 2D discrete wavelet transform layers (the DWT/IDWT of CLGNet's wavelet branch).

Convention (matches PyWavelets exactly): ``DWT()(x)`` equals ``pywt.dwt2(x, wavelet,
mode="periodization")`` over the last two axes, with the subbands concatenated along channels
as ``[cA, cH, cV, cD]`` (the paper's ``[LL, LH, HL, HH]``)::

    x: B x C x H x W  ->  B x 4C x H/2 x W/2,   channels [cA_0..cA_{C-1}, cH_0.., cV_0.., cD_0..]

For the Haar wavelet and each 2x2 block ``[[a, b], [c, d]]``: cA = (a+b+c+d)/2,
cH = (a+b-c-d)/2, cV = (a-b+c-d)/2, cD = (a-b-c+d)/2. ``IDWT`` is the inverse
(``pywt.idwt2``); the transform is orthonormal, so IDWT(DWT(x)) == x up to rounding.

Any orthogonal PyWavelets wavelet works by name ("haar", "db2", "sym4", ...): the filter bank is
``pywt.Wavelet(name).dec_lo / dec_hi``, and filters longer than 2 taps wrap around the image
(PyWavelets mode "periodization"). Haar (and its alias "db1") takes a reshape path with no
convolution: PixelUnshuffle(2), then a 4 x 4 mix of each 2x2 block (``DWT.block_matrix``).
H and W must be even (``CLGNet`` pads its input to even sizes).
"""

from __future__ import annotations

from typing import Optional

import pywt
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_even(x: Tensor, what: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{what} expects a B x C x H x W tensor, got shape {tuple(x.shape)}")
    if x.shape[-2] % 2 or x.shape[-1] % 2:
        raise ValueError(f"{what} needs even H and W, got {tuple(x.shape[-2:])}")


class _WaveletFilters(nn.Module):
    """The 2D analysis filters of an orthogonal wavelet, shared by ``DWT`` and ``IDWT``."""

    def __init__(self, wavelet: str = "haar"):
        super().__init__()
        bank = pywt.Wavelet(wavelet)
        if not bank.orthogonal:
            # IDWT is implemented as the adjoint of DWT, which is its inverse only when the
            # transform is orthogonal (biorthogonal "bior*" wavelets are not).
            raise ValueError(f"wavelet {wavelet!r} is not orthogonal; use e.g. haar, db2, sym4")
        self.wavelet = wavelet
        self.taps = len(bank.dec_lo)
        self.is_haar = self.taps == 2  # "haar" and its alias "db1": the fast path
        # pywt periodization: cA[k] = sum_j dec_lo[j] * x[(2k + taps/2 - j) mod N]. As a
        # cross-correlation (what conv2d computes) that is the reversed filter at stride 2 on
        # the signal extended periodically by taps/2 - 1 samples on each side.
        lo = torch.tensor(bank.dec_lo[::-1], dtype=torch.float64)
        hi = torch.tensor(bank.dec_hi[::-1], dtype=torch.float64)
        # First factor filters along H, second along W: cH is high-pass along H (rows
        # differ), cV high-pass along W, matching pywt.dwt2's (cA, (cH, cV, cD)).
        bank2d = torch.stack(
            [torch.outer(lo, lo), torch.outer(hi, lo), torch.outer(lo, hi), torch.outer(hi, hi)]
        )
        # Derived from the wavelet name, so not part of the state dict.
        self.register_buffer("filters", bank2d.unsqueeze(1).float(), persistent=False)

    @property
    def pad(self) -> int:
        return self.taps // 2 - 1

    @property
    def block_matrix(self) -> Optional[Tensor]:
        """For a 2-tap wavelet (Haar), the 4 x 4 orthogonal matrix ``M`` with
        ``DWT(x)[:, k*C + c] = sum_q M[k, q] * pixel_unshuffle(x, 2)[:, c*4 + q]``; else None.

        Rows are the subbands [cA, cH, cV, cD], columns the 2x2 block's pixels in
        pixel_unshuffle's order [(0, 0), (0, 1), (1, 0), (1, 1)]. Haar's is
        ``0.5 * [[1, 1, 1, 1], [1, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1]]``.
        """
        return self.filters.view(4, 4) if self.is_haar else None

    def extra_repr(self) -> str:
        return f"wavelet={self.wavelet!r}"


def _periodic_index(n: int, pad: int, device: torch.device) -> Tensor:
    return torch.arange(-pad, n + pad, device=device) % n


class DWT(_WaveletFilters):
    """One level of the 2D DWT: ``B x C x H x W -> B x 4C x H/2 x W/2`` ([cA, cH, cV, cD])."""

    def forward(self, x: Tensor) -> Tensor:
        _check_even(x, "DWT")
        b, c, h, w = x.shape
        if self.is_haar:  # no overlap between blocks: a 4 x 4 mix of each 2x2 block
            blocks = F.pixel_unshuffle(x, 2).view(b, c, 4, h // 2, w // 2)
            y = torch.einsum("kq,bcqhw->bkchw", self.block_matrix.to(x.dtype), blocks)
            return y.reshape(b, 4 * c, h // 2, w // 2)
        pad = self.pad
        # Periodic extension by gathering (works even where pad exceeds the image size).
        xp = x.index_select(2, _periodic_index(h, pad, x.device))
        xp = xp.index_select(3, _periodic_index(w, pad, x.device))
        y = F.conv2d(xp.reshape(b * c, 1, h + 2 * pad, w + 2 * pad), self.filters.to(x.dtype),
                     stride=2)
        return y.view(b, c, 4, h // 2, w // 2).transpose(1, 2).reshape(b, 4 * c, h // 2, w // 2)


class IDWT(_WaveletFilters):
    """Inverse of ``DWT``: ``B x 4C x h x w -> B x C x 2h x 2w`` (subbands [cA, cH, cV, cD])."""

    def forward(self, y: Tensor) -> Tensor:
        if y.dim() != 4 or y.shape[1] % 4:
            raise ValueError(f"IDWT expects B x 4C x h x w, got shape {tuple(y.shape)}")
        b, c4, h, w = y.shape
        c, pad = c4 // 4, self.pad
        if self.is_haar:  # the block matrix is orthogonal: its transpose inverts it
            mix = self.block_matrix.to(y.dtype)
            blocks = torch.einsum("kq,bkchw->bcqhw", mix, y.view(b, 4, c, h, w))
            return F.pixel_shuffle(blocks.reshape(b, c4, h, w), 2)
        z = y.view(b, 4, c, h, w).transpose(1, 2).reshape(b * c, 4, h, w)
        # The adjoint of "extend periodically, correlate at stride 2": a transposed
        # convolution, then fold the extension back onto the samples it copied. The
        # transform is orthogonal, so the adjoint is the inverse.
        xp = F.conv_transpose2d(z, self.filters.to(y.dtype), stride=2)
        idx_h = _periodic_index(2 * h, pad, y.device)
        idx_w = _periodic_index(2 * w, pad, y.device)
        xh = xp.new_zeros(b * c, 1, 2 * h, xp.shape[-1]).index_add_(2, idx_h, xp)
        x = xh.new_zeros(b * c, 1, 2 * h, 2 * w).index_add_(3, idx_w, xh)
        return x.view(b, c, 2 * h, 2 * w)


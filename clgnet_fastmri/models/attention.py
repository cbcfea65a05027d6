"""Self-attention and Swin transformer bodies for the paper's Table 4 comparison models.

Table 4 of the paper replaces the SFL's Fourier unit by the two usual ways of learning
global information, keeping the parameter count close to CLGNet's:

- CLGNet_SA (0.88 M): "we only add the self-attention in the end of SFRIR" of CLGNet_non
  (SFLs without the FFT pair): each SFRIR is followed by ``SelfAttentionBlock``.
- CLGNet_Tran (0.95 M): "we use the Residual Swin Transformer Block (RSTB) proposed in
  SwinIR [20] to replace the SFRIR": each SFRIR is replaced by ``RSTB``.

Both are built from one ``AttentionLayer``, a pre-norm transformer layer on channels-last
tokens (Swin's ``SwinTransformerBlock``)::

    x = x + Proj(Attention(LN(x)))           global (SA) or in w x w windows (Swin)
    x = x + MLP(LN(x))                       Linear(C -> hidden), GELU, Linear(hidden -> C)

Choices the paper leaves open (sizes for C = 32; parameter counts from ``CLGNet(chans=32)``
with the paper's 4 groups per branch, two branches, so 8 blocks in all; CLGNet_non has
818,625 parameters, 148,673 of them outside the bodies):

- Self-attention (CLGNet_SA): one transformer layer with *global* multi-head attention over
  all H/2 x W/2 positions of the branch, 4 heads of 8 channels, no positional encoding (the
  surrounding convolutions already see position), and an MLP of hidden width 2C = 64. The
  attention alone (LN + QKV + projection, 4,288 parameters per block) would give 0.853 M;
  the MLP (ratio 2, SwinIR-light's) brings the block to 8,544 and CLGNet_SA to
  **886,977** parameters (paper 0.88 M, +0.8 %). The paper's Table 4 FLOPs for SA (+1.6 GMac
  over CLGNet_non at 512x512) count only these per-position projections; the N^2 attention
  products (N = 65,536 positions per branch at 512x512) are what make it slow.
- RSTB (CLGNet_Tran): SwinIR's group: ``x + Conv3x3(STL_6(...STL_1(x)))`` with 6 Swin
  transformer layers (SwinIR's depth), alternating regular and shifted windows (shift
  w/2), window 8 (divides the half-resolution maps of 256, 320 and 512 images), 4 heads,
  relative position bias ((2w-1)^2 x heads table, as Swin). The free width is the MLP's:
  Swin's ratio 4 (hidden 128) gives 0.876 M, so the hidden width is set to 152 (ratio 4.75),
  which gives **950,529** parameters (paper 0.95 M). SwinIR's patch embedding/unembedding are
  reshapes here (tokens = channels-last pixels), and its optional patch norm is not used.
- Sizes not a multiple of the window: the RSTB pads its input at the bottom/right by edge
  replication to the next multiple of w (as ``CLGNet`` pads odd sizes), runs its layers on
  the padded map (the padded positions are ordinary tokens, as in Swin's detection code) and
  crops back before its closing convolution.
- Widths for other C: 4 heads when C is a multiple of 4 (else 2 or 1); hidden widths 2C (SA)
  and round(4.75 C) (RSTB).
- Initialisation as SwinIR: Linear weights truncated normal (std 0.02) with zero bias,
  LayerNorm (1, 0), relative position table truncated normal (std 0.02); the RSTB's
  convolution keeps PyTorch's default.
- Attention is ``F.scaled_dot_product_attention`` (fused, memory-efficient kernels where
  available; scale 1/sqrt(head width) as Swin); the shifted-window mask is -inf between
  positions from different regions of the rolled map.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Swin window and depth of the CLGNet_Tran groups (see the module docstring).
WINDOW_SIZE = 8
RSTB_DEPTH = 6


def default_num_heads(dim: int) -> int:
    """4 heads when ``dim`` allows, else 2 or 1 (the head width must divide ``dim``)."""
    return next(h for h in (4, 2, 1) if dim % h == 0)


class AttentionLayer(nn.Module):
    """A pre-norm transformer layer on ``B x H x W x C`` tokens (Swin's block structure).

    ``x + Proj(MHSA(LN(x)))`` then ``x + MLP(LN(x))``. With ``window_size`` None the
    attention is global (every position attends to every other); with a window it is Swin's
    W-MSA (``shift`` 0) or SW-MSA (``shift`` > 0: the map is rolled by ``-shift`` first and
    positions from different regions of the rolled map are masked), with a learned relative
    position bias. H and W must be multiples of the window (``RSTB`` pads).

    Args:
        dim: C. num_heads: attention heads (C must be a multiple). mlp_hidden: MLP width.
        window_size: w, or None for global attention. shift: cyclic shift (0 <= shift < w).
    """

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int,
                 window_size: Optional[int] = None, shift: int = 0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        if window_size is None and shift:
            raise ValueError("a shift needs a window_size")
        if window_size is not None and not 0 <= shift < window_size:
            raise ValueError(f"shift must be in [0, {window_size}), got {shift}")
        self.num_heads, self.window_size, self.shift = num_heads, window_size, shift
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, dim))
        if window_size is not None:
            w = window_size
            self.relative_position_bias = nn.Parameter(torch.zeros((2 * w - 1) ** 2, num_heads))
            nn.init.trunc_normal_(self.relative_position_bias, std=0.02)
            self.register_buffer("relative_index", _relative_index(w), persistent=False)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), dims=(1, 2))
        windows = self._partition(y)  # B x nW x N x C
        n_win, n = windows.shape[1:3]
        heads = self.num_heads
        # Heads of all windows on one axis, so the bias/mask (nW*heads x N x N) broadcast over B.
        qkv = self.qkv(windows).view(b, n_win, n, 3, heads, c // heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, b, n_win * heads, n, c // heads)
        mask = self._attention_bias(h, w, q.dtype, q.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.view(b, n_win, heads, n, c // heads).transpose(2, 3).reshape(b, n_win, n, c)
        y = self._merge(self.proj(out), h, w)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))

    def _partition(self, x: Tensor) -> Tensor:
        """``B x H x W x C -> B x nW x N x C`` (N = w*w positions per window)."""
        b, h, w, c = x.shape
        s = self.window_size
        if s is None:
            return x.reshape(b, 1, h * w, c)
        x = x.view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, (h // s) * (w // s), s * s, c)

    def _merge(self, windows: Tensor, h: int, w: int) -> Tensor:
        """Inverse of ``_partition``."""
        b, _, _, c = windows.shape
        s = self.window_size
        if s is None:
            return windows.view(b, h, w, c)
        x = windows.view(b, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, h, w, c)

    def _attention_bias(self, h: int, w: int, dtype: torch.dtype,
                        device: torch.device) -> Optional[Tensor]:
        """``1 x (nW*heads) x N x N`` additive bias (+ shift mask), None for global attention."""
        s = self.window_size
        if s is None:
            return None
        bias = self.relative_position_bias[self.relative_index.view(-1)]
        bias = bias.view(s * s, s * s, -1).permute(2, 0, 1)  # heads x N x N
        n_win = (h // s) * (w // s)
        if not self.shift:
            return bias.to(dtype).repeat(n_win, 1, 1).unsqueeze(0)
        regions = torch.zeros(1, h, w, 1, device=device)
        cuts = (slice(0, -s), slice(-s, -self.shift), slice(-self.shift, None))
        for i, rows in enumerate(cuts):
            for j, cols in enumerate(cuts):
                regions[:, rows, cols] = 3 * i + j
        labels = self._partition(regions).view(n_win, s * s)
        blocked = labels[:, :, None] != labels[:, None, :]  # nW x N x N
        mask = torch.zeros(blocked.shape, dtype=bias.dtype, device=device)
        mask = mask.masked_fill(blocked, float("-inf"))
        bias = mask[:, None] + bias[None]  # nW x heads x N x N
        return bias.to(dtype).reshape(1, n_win * self.num_heads, s * s, s * s)


def _relative_index(window: int) -> Tensor:
    """``N x N`` index into the ``(2w-1)^2`` relative position table (Swin's)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                        indexing="ij")).flatten(1)  # 2 x N
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # 2 x N x N, in [0, 2w-2]
    return rel[0] * (2 * window - 1) + rel[1]


def _tokens(x: Tensor) -> Tensor:
    """``B x C x H x W -> B x H x W x C`` (a view for channels_last input)."""
    return x.permute(0, 2, 3, 1)


def _image(tokens: Tensor) -> Tensor:
    """``B x H x W x C -> B x C x H x W`` (channels_last memory when ``tokens`` is contiguous)."""
    return tokens.permute(0, 3, 1, 2)


class SelfAttentionBlock(nn.Module):
    """CLGNet_SA's global self-attention, added after each SFRIR (paper Table 4).

    ``B x C x H x W -> B x C x H x W``: one global ``AttentionLayer`` (every one of the H*W
    positions attends to all others; cost O((H*W)^2 * C)). Default sizes in the module
    docstring.
    """

    def __init__(self, dim: int, num_heads: Optional[int] = None,
                 mlp_hidden: Optional[int] = None):
        super().__init__()
        self.layer = AttentionLayer(dim, num_heads or default_num_heads(dim),
                                    mlp_hidden or 2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        return _image(self.layer(_tokens(x)))


class RSTB(nn.Module):
    """Residual Swin Transformer Block (SwinIR, Liang et al. 2021), CLGNet_Tran's SFRIR.

    ``x + Conv3x3(STL_depth(...STL_1(x)))``, ``B x C x H x W`` in and out for any H, W (padded
    to a multiple of the window inside, see the module docstring). Layers alternate regular
    and shifted (w/2) windows.

    Args:
        dim: C. depth: Swin layers (SwinIR: 6). num_heads: default 4 (see
        ``default_num_heads``). window_size: w (8). mlp_hidden: default round(4.75 C).
    """

    def __init__(self, dim: int, depth: int = RSTB_DEPTH, num_heads: Optional[int] = None,
                 window_size: int = WINDOW_SIZE, mlp_hidden: Optional[int] = None):
        super().__init__()
        heads = num_heads or default_num_heads(dim)
        hidden = mlp_hidden or round(4.75 * dim)
        self.window_size = window_size
        self.layers = nn.Sequential(*[
            AttentionLayer(dim, heads, hidden, window_size, shift=(i % 2) * (window_size // 2))
            for i in range(depth)
        ])
        self.conv = nn.Conv2d(dim, dim, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        s = self.window_size
        pad_h, pad_w = -h % s, -w % s
        y = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x
        y = _image(self.layers(_tokens(y).contiguous()))[..., :h, :w]
        return self.conv(y) + x

"""The paper's Table 4 comparison models: CLGNet_SA (global self-attention) and CLGNet_Tran
(SwinIR's RSTB in place of each SFRIR)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clgnet_fastmri.models import RSTB, AttentionLayer, SelfAttentionBlock
from clgnet_fastmri.models.registry import build_network

VARIANTS = ("sa", "tran")  # the registry's CLGNet_SA and CLGNet_Tran
# 8 channels: the attention blocks split them into heads.
TINY = dict(chans=8, num_sfrir=1, num_sfrb=1)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, exact, paper", [("sa", 886_977, 0.88e6),
                                                 ("tran", 950_529, 0.95e6)])
def test_parameter_counts_match_the_paper_table_4(name, exact, paper):
    count = n_params(build_network(name))
    assert count == exact
    assert abs(count / paper - 1) < 0.01  # the paper's table rounds to 10 k
    # Global information costs parameters on top of CLGNet_non (paper 0.81 M).
    assert count > n_params(build_network("no-sfl"))


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("shape", [
    # Global attention over 160 x 160 (or 160 x 184) positions takes seconds on 2 cores.
    pytest.param((320, 320), marks=pytest.mark.slow),
    pytest.param((320, 368), marks=pytest.mark.slow),
    (33, 45),
    (31, 16),
])
def test_output_has_the_input_shape(name, shape):
    model = build_network(name, **TINY).eval()
    x = torch.randn(1, 1, *shape)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    model = build_network(name, **{**TINY, "num_sfrir": 2}).train()
    model(torch.randn(2, 1, 26, 22)).square().mean().backward()  # 13 x 11 bodies: Swin pads
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def changed_positions(layer: torch.nn.Module, x: torch.Tensor, pixel: tuple) -> torch.Tensor:
    """H x W map of the positions whose output moves when one input pixel changes.

    The change is random across channels: LayerNorm would cancel a constant one. With the
    initialisation's small attention logits, far positions move by ~1e-5, unmoved ones by 0.
    """
    y = x.clone()
    change = torch.randn(x.shape[1], generator=torch.Generator().manual_seed(1))
    y[(0, slice(None)) + pixel] += 3 * change
    with torch.no_grad():
        diff = (layer(y) - layer(x)).abs().amax(dim=1)[0]
    return diff > 1e-7


def test_self_attention_is_global():
    torch.manual_seed(0)
    block = SelfAttentionBlock(8).eval()
    x = torch.randn(1, 8, 12, 10)
    assert changed_positions(block, x, (0, 0)).all()  # the far corner too


def test_swin_attention_stays_in_its_window_until_the_shifted_layer():
    torch.manual_seed(0)
    regular = AttentionLayer(8, 2, 16, window_size=4, shift=0).eval()
    shifted = AttentionLayer(8, 2, 16, window_size=4, shift=2).eval()

    def tokens_in(layers):
        return lambda x: layers(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    x = torch.randn(1, 8, 16, 16)
    window = torch.zeros(16, 16, dtype=torch.bool)
    window[4:8, 4:8] = True
    first = changed_positions(tokens_in(regular), x, (5, 5))
    assert torch.equal(first, window)
    both = changed_positions(tokens_in(torch.nn.Sequential(regular, shifted)), x, (5, 5))
    assert (both & ~window).any()  # the shifted windows carry it across the window border
    reach = torch.zeros(16, 16, dtype=torch.bool)
    reach[2:10, 2:10] = True  # the shifted windows that overlap the first window
    assert not (both & ~reach).any()


def test_one_window_covering_the_map_is_global_attention():
    """Window partition/merge and bias are right: one zero-bias window = global attention."""
    torch.manual_seed(0)
    windowed = AttentionLayer(8, 2, 16, window_size=6)
    with torch.no_grad():
        windowed.relative_position_bias.zero_()
    plain = AttentionLayer(8, 2, 16)
    plain.load_state_dict(windowed.state_dict(), strict=False)
    x = torch.randn(2, 6, 6, 8)
    torch.testing.assert_close(windowed(x), plain(x))


def test_rstb_pads_to_the_window_and_crops_back():
    torch.manual_seed(0)
    block = RSTB(8, depth=2, window_size=4).eval()
    x = torch.randn(1, 8, 10, 7)
    with torch.no_grad():
        y = block(x)
        # The layers see the replicate-padded map; the crop and the residual are exact.
        padded = F.pad(x, (0, 1, 0, 2), mode="replicate")
        inner = block.layers(padded.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)[..., :10, :7]
    torch.testing.assert_close(y, block.conv(inner) + x)


def test_attention_layer_rejects_bad_settings():
    with pytest.raises(ValueError, match="num_heads"):
        AttentionLayer(6, 4, 12)
    with pytest.raises(ValueError, match="shift"):
        AttentionLayer(8, 2, 16, window_size=4, shift=4)

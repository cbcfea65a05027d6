"""DWT/IDWT against PyWavelets' dwt2/idwt2 (the convention CLGNet's wavelet branch relies on)."""

import numpy as np
import pytest
import pywt
import torch

from clgnet_fastmri.models import DWT, IDWT


def _pywt_dwt2(x: torch.Tensor, wavelet: str) -> np.ndarray:
    ca, (ch, cv, cd) = pywt.dwt2(x.numpy(), wavelet, mode="periodization")  # over the last 2 axes
    return np.concatenate([ca, ch, cv, cd], axis=1)


@pytest.mark.parametrize("wavelet", ["haar", "db2", "sym4"])
@pytest.mark.parametrize("shape", [(2, 3, 8, 12), (1, 2, 2, 6), (3, 1, 10, 4)])
def test_dwt_matches_pywt_dwt2(wavelet, shape):
    x = torch.randn(shape, dtype=torch.float64)
    np.testing.assert_allclose(DWT(wavelet)(x).numpy(), _pywt_dwt2(x, wavelet), atol=1e-5)


@pytest.mark.parametrize("wavelet", ["haar", "db2", "sym4"])
@pytest.mark.parametrize("shape", [(2, 3, 8, 12), (1, 2, 2, 6)])
def test_idwt_matches_pywt_idwt2(wavelet, shape):
    b, c, h, w = shape
    y = torch.randn(b, 4 * c, h // 2, w // 2, dtype=torch.float64)
    ca, ch, cv, cd = y.numpy().reshape(b, 4, c, h // 2, w // 2).transpose(1, 0, 2, 3, 4)
    expected = pywt.idwt2((ca, (ch, cv, cd)), wavelet, mode="periodization")
    np.testing.assert_allclose(IDWT(wavelet)(y).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
def test_idwt_inverts_dwt_in_float32_and_channels_last(wavelet):
    x = torch.randn(2, 5, 16, 10)
    y = DWT(wavelet)(x)
    torch.testing.assert_close(IDWT(wavelet)(y), x, atol=1e-5, rtol=0)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(DWT(wavelet)(x_cl), y, atol=1e-6, rtol=0)


def test_haar_subbands_of_one_block_follow_the_design_formula():
    a, b, c, d = 1.0, 2.0, 5.0, 11.0
    y = DWT("haar")(torch.tensor([[[[a, b], [c, d]]]])).flatten().tolist()
    expected = [(a + b + c + d) / 2, (a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2]
    assert y == pytest.approx(expected)


def test_block_matrix_is_haar_and_orthogonal_and_absent_for_longer_filters():
    m = DWT("haar").block_matrix
    expected = 0.5 * torch.tensor([[1, 1, 1, 1], [1, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1.0]])
    torch.testing.assert_close(m, expected)
    torch.testing.assert_close(m @ m.T, torch.eye(4))
    assert DWT("db2").block_matrix is None


def test_filters_are_not_in_the_state_dict():
    assert DWT("db2").state_dict() == {} and IDWT("haar").state_dict() == {}


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="even"):
        DWT()(torch.randn(1, 1, 5, 4))
    with pytest.raises(ValueError, match="orthogonal"):
        DWT("bior1.3")
    with pytest.raises(ValueError, match="4C"):
        IDWT()(torch.randn(1, 3, 4, 4))

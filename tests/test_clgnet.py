"""CLGNet held against the paper's formulas written plainly (``models.reference``).

The fast modules compute the formulas in a rearranged form (channels_last, 1x1 convolutions
as matrix products, the fuse convolution split and folded, Haar folded into the branch
convolutions). Each is compared in float64 with its ``Reference*`` module loaded from the same
state dict, with every layout candidate ``models.layout`` may choose.
"""

import copy
import shutil
import threading

import pytest
import scipy.fft
import torch
import torch.nn.functional as F

from clgnet_fastmri.models import (
    SFL,
    SFRB,
    SFRIR,
    CLGNet,
    FourierUnit,
    ReferenceCLGNet,
    ReferenceFourierUnit,
    ReferenceSFL,
    ReferenceSFRB,
    ReferenceSFRIR,
    layout,
)
from clgnet_fastmri.models.clgnet import _conv3x3_of_concat, side_by_side

# Every candidate of every layout choice, fixed (the default measures and picks one).
# The FFT candidates (channels_last, nchw, pocketfft) each with a copy candidate, then the pairs
# left; the whole-network tests take the first three.
LAYOUTS = ["channels_last,strided", "nchw,blocked", "pocketfft,strided", "channels_last,blocked",
           "nchw,strided", "pocketfft,blocked"]


def _tiny(**kwargs) -> CLGNet:
    return CLGNet(**{"chans": 4, "num_sfrir": 1, "num_sfrb": 1, **kwargs})


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomise_bn(model: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so eval mode is exercised."""
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_(1.0, 0.2)
            bn.bias.normal_()


def _as_reference(module: torch.nn.Module, reference: torch.nn.Module) -> torch.nn.Module:
    """``reference`` holding ``module``'s state dict (strict: same keys and shapes)."""
    reference.load_state_dict(module.state_dict())
    return reference.to(next(module.parameters()).dtype).train(module.training)


def _check_against_reference(module, reference, x, train: bool):
    """Output, BatchNorm running statistics and (in train mode) gradients equal the reference's
    (a ``Reference*`` module, given the module's state dict)."""
    module = module.double().train(train)
    twin = _as_reference(module, reference)
    x = x.clone().requires_grad_(train)
    x_twin = x.detach().clone().requires_grad_(train)
    out = module(x)
    expected = twin(x_twin)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    twin_buffers = dict(twin.named_buffers())
    for name, a in module.named_buffers():
        torch.testing.assert_close(a, twin_buffers[name], rtol=1e-9, atol=1e-12, msg=name)
    if train:
        grad = torch.randn_like(out)
        out.backward(grad)
        expected.backward(grad)
        torch.testing.assert_close(x.grad, x_twin.grad, rtol=1e-8, atol=1e-9)
        twin_params = dict(twin.named_parameters())
        for name, a in module.named_parameters():
            torch.testing.assert_close(a.grad, twin_params[name].grad, rtol=1e-8, atol=1e-9,
                                       msg=name)


# --- parameter counts ----------------------------------------------------------------------


def test_parameter_counts_match_the_paper():
    # Exact, as README quotes them; the paper rounds: CLGNet 0.96 M, CLGNet_non 0.81 M.
    default = _n_params(CLGNet())
    assert default == 969_153
    assert _n_params(CLGNet(global_module="none")) == 818_625
    assert _n_params(CLGNet(wavelet=None)) == default  # "w/o wavelet" keeps the count
    model = CLGNet()
    assert _n_params(model.wavelet_branch) == _n_params(model.spatial_branch)


# --- each block against its formula ---------------------------------------------------------


@pytest.mark.parametrize("layouts", LAYOUTS)
@pytest.mark.parametrize("size", [(10, 14), (9, 13)])
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("spectral", [True, False])
def test_fourier_unit_and_sfl_follow_their_formulas(train, spectral, size, layouts):
    torch.manual_seed(0)
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    fu = FourierUnit(6, spectral)
    sfl = SFL(6, spectral)
    _randomise_bn(fu), _randomise_bn(sfl)
    with layout.fixed(layouts):
        _check_against_reference(fu, ReferenceFourierUnit(6, spectral), x, train)
        _check_against_reference(sfl, ReferenceSFL(6, spectral), x, train)


def test_fourier_unit_holds_one_spectrum_for_its_backward():
    # BN's input and output are recomputed in backward, not held from forward to backward.
    fu = FourierUnit(4).train()
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    spectrum_bytes = 2 * 16 * (16 // 2 + 1) * 8 * 4  # B x H x (W/2+1) x 2C float32
    held = {}

    def pack(t):
        held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fu(x).sum().backward()
    assert sorted(n for n in held.values() if n >= spectrum_bytes // 2) == [spectrum_bytes]
    assert fu.conv.weight.grad is not None and fu.bn.weight.grad is not None


@pytest.mark.parametrize("layouts", LAYOUTS)
def test_fourier_unit_keeps_channels_last_forward_and_backward(layouts):
    # The fuse product reads the unit's output as rows, and autograd adds the unit's input
    # gradient to the 3x3 convolution's: an NCHW tensor in either place makes them strided
    # loops, several times slower (BENCHMARKS.md, issue 28, eighth session).
    x = torch.randn(2, 4, 16, 16).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    with layout.fixed(layouts):
        out = FourierUnit(4).train()(x)
        grad = torch.randn_like(out)
        out.backward(grad)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


def test_fixed_pocketfft_runs_every_fft_of_a_fourier_unit_in_pocketfft(monkeypatch):
    # With the reference tests above under the same fixed layout, this shows the pocketfft
    # candidates compute the paper's formula forward and backward (not a torch fallback).
    calls = []
    for name in ("rfftn", "irfftn"):
        fft = getattr(scipy.fft, name)
        monkeypatch.setattr(scipy.fft, name, lambda *a, _name=name, _fft=fft, **k:
                            calls.append(_name) or _fft(*a, **k))
    x = torch.randn(2, 4, 10, 13, dtype=torch.float64, requires_grad=True)
    with layout.fixed("pocketfft"):
        FourierUnit(4).double().train()(x).sum().backward()
    assert calls == ["rfftn", "irfftn", "rfftn", "irfftn"]  # forward pair, then backward pair


@pytest.mark.parametrize("train", [False, True])
def test_sfrb_and_sfrir_follow_their_formulas(train):
    torch.manual_seed(1)
    x = torch.randn(2, 4, 8, 12, dtype=torch.float64)
    _check_against_reference(SFRB(4), ReferenceSFRB(4), x, train)
    _check_against_reference(SFRIR(4, num_sfrb=2), ReferenceSFRIR(4, num_sfrb=2), x, train)


@pytest.mark.parametrize("layouts", LAYOUTS[:3])
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"wavelet": "db2"}, {"wavelet": None}, {"global_module": "none"}, {"out_chans": 2}],
    ids=["haar", "db2", "no-wavelet", "no-fft", "2-out"],
)
def test_clgnet_follows_its_formula(kwargs, train, layouts):
    torch.manual_seed(2)
    kwargs = {"chans": 4, "num_sfrir": 1, "num_sfrb": 2, "in_chans": 2, **kwargs}
    model = CLGNet(**kwargs)
    _randomise_bn(model)
    x = torch.randn(2, 2, 12, 18, dtype=torch.float64)  # odd width in the branches
    with layout.fixed(layouts):
        _check_against_reference(model, ReferenceCLGNet(**kwargs), x, train)


# --- layouts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("copy", ["strided", "blocked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64, torch.float64])
def test_layout_copies_keep_the_values(copy, dtype):
    x = torch.randn(3, 5, 30, 31, dtype=dtype)  # 930 x 5 per sample: torch's blocked path
    cl = x.contiguous(memory_format=torch.channels_last)
    with layout.fixed(copy):
        to_nchw, to_cl = layout.nchw(cl), layout.channels_last(x)
    assert to_nchw.is_contiguous() and torch.equal(to_nchw, x)
    assert to_cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(to_cl, x)


def test_space_to_depth_is_pixel_unshuffle_with_channels_by_pixel():
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    blocks = layout.space_to_depth(x)
    by_pixel = F.pixel_unshuffle(x, 2).unflatten(1, (3, 4)).transpose(1, 2).flatten(1, 2)
    assert blocks.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(blocks, by_pixel)
    assert torch.equal(layout.depth_to_space(blocks), x)
    torch.autograd.gradcheck(layout.space_to_depth, x[:1, :, :4, :4].requires_grad_())
    torch.autograd.gradcheck(layout.depth_to_space, blocks[:1, :, :2].detach().requires_grad_())


def test_fastest_measures_once_per_key_then_reuses_the_choice(monkeypatch):
    monkeypatch.setattr(layout, "_chosen", {})
    monkeypatch.setattr(layout, "_fixed", ())  # measured, whatever CLGNET_LAYOUT says
    calls = []
    x = torch.zeros(2, 3)

    def candidates(value: torch.Tensor):
        return {name: lambda name=name: calls.append(name) or value
                for name in ("channels_last", "nchw")}

    assert layout.fastest("rfft2", [x], candidates(x)) is x
    assert sorted(calls) == ["channels_last"] * layout._ROUNDS + ["nchw"] * layout._ROUNDS
    [choice] = layout.chosen()
    assert choice["op"] == "rfft2" and choice["shapes"] == [[2, 3]]
    assert choice["chosen"] in ("channels_last", "nchw") and choice["threads"] >= 1
    calls.clear()
    layout.fastest("rfft2", [x], candidates(x))
    assert calls == [choice["chosen"]]  # cached for the key
    calls.clear()
    with layout.fixed("irfft2=channels_last", "rfft2=nchw"):
        layout.fastest("rfft2", [torch.zeros(5)], candidates(x))
    assert calls == ["nchw"] and len(layout.chosen()) == 1  # fixed: nothing measured
    calls.clear()
    layout.fastest("rfft2", [x], candidates(x), variant="copied")  # another result: measured
    assert len(calls) == 2 * layout._ROUNDS
    assert [c["op"] for c in layout.chosen()] == ["rfft2", "rfft2 (copied)"]


def test_a_bad_fixed_layout_is_refused():
    with pytest.raises(ValueError, match="CLGNET_LAYOUT"):
        with layout.fixed("rows"):
            pass
    with pytest.raises(ValueError, match="CLGNET_LAYOUT"):
        with layout.fixed("fft=nchw"):
            pass


@pytest.mark.parametrize(
    "kwargs", [{}, {"wavelet": None}, {"global_module": "self_attention"},
               {"global_module": "swin"}], ids=["clgnet", "no-wavelet", "sa", "tran"])
def test_state_dicts_load_into_either_form(kwargs):
    fast, reference = CLGNet(**kwargs), ReferenceCLGNet(**kwargs)
    assert {k: v.shape for k, v in fast.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()}
    fast.load_state_dict(reference.state_dict())
    reference.load_state_dict(fast.state_dict())


def test_odd_sizes_are_padded_by_replication_and_cropped():
    torch.manual_seed(3)
    model = _tiny().double().eval()
    reference = _as_reference(model, ReferenceCLGNet(chans=4, num_sfrir=1, num_sfrb=1))
    x = torch.randn(1, 1, 11, 14, dtype=torch.float64)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-9, atol=1e-9)
    padded = F.pad(x, (0, 0, 0, 1), mode="replicate")
    torch.testing.assert_close(model(x), model(padded)[..., :11, :], rtol=1e-9, atol=1e-9)


def test_net_out_without_concatenation_equals_the_convolution():
    a = torch.randn(2, 5, 9, 7).contiguous(memory_format=torch.channels_last)
    b = torch.randn(2, 3, 9, 7)
    for out_chans in (1, 3):
        weight, bias = torch.randn(out_chans, 8, 3, 3), torch.randn(out_chans)
        expected = F.conv2d(torch.cat([a, b], 1), weight, bias, padding=1)
        torch.testing.assert_close(_conv3x3_of_concat([a, b], weight, bias), expected,
                                   rtol=1e-4, atol=1e-4)


# --- receptive fields -----------------------------------------------------------------------


def _change_from_one_pixel(module, shape=(1, 3, 16, 16), at=(0, 0)):
    module = module.double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    y = x.clone()
    y[..., at[0], at[1]] += 1.0
    with torch.no_grad():
        return (module(y) - module(x)).abs().amax(dim=(0, 1))


def test_fourier_unit_sees_the_whole_image():
    torch.manual_seed(4)
    fu = FourierUnit(3)
    with torch.no_grad():
        fu.conv.weight.normal_()  # every output frequency depends on every input frequency
    assert (_change_from_one_pixel(fu) > 1e-9).all()


def test_local_only_variant_does_not():
    torch.manual_seed(5)
    assert (_change_from_one_pixel(FourierUnit(3, spectral=False))[1:, 1:] == 0).all()
    change = _change_from_one_pixel(SFL(3, spectral=False), at=(8, 8))
    assert change[7:10, 7:10].max() > 0
    change[7:10, 7:10] = 0
    assert (change == 0).all()  # nothing outside the 3x3 neighbourhood
    spectral = _change_from_one_pixel(SFL(3), at=(8, 8))
    assert (spectral[:3, :3] > 0).all()  # while the full SFL reaches the far corner


@pytest.mark.parametrize("factor", [0.0, 0.25])
def test_global_init_scales_only_the_fuse_weights_that_read_the_fourier_unit(factor):
    torch.manual_seed(8)
    default = _tiny(num_sfrb=2)
    torch.manual_seed(8)
    scaled = _tiny(num_sfrb=2, global_init=factor)
    expected, got = default.state_dict(), scaled.state_dict()
    assert expected.keys() == got.keys()
    fuses = [name for name in got if name.endswith("fuse.weight")]
    assert len(fuses) == 2 * 2 * 2  # two SFLs in each of two SFRBs in each of two branches
    for name in got:
        want = expected[name].clone()
        if name in fuses:
            want[:, 4:] *= factor  # input channels [local (C = 4), global]
        torch.testing.assert_close(got[name], want, rtol=0, atol=0, msg=name)
    torch.manual_seed(8)
    without_ffts = _tiny(global_module="none").state_dict()
    torch.manual_seed(8)
    for name, value in _tiny(global_module="none", global_init=factor).state_dict().items():
        torch.testing.assert_close(value, without_ffts[name], rtol=0, atol=0, msg=name)
    if factor == 0:  # the Fourier units start silent: no gradient reaches them yet, while
        # the fuse weights that read them have one (they learn how much to add)
        scaled(torch.randn(2, 1, 16, 16)).square().mean().backward()
        grads = dict(scaled.named_parameters())
        assert sum(grads[name].grad[:, 4:].abs().sum() for name in fuses) > 0
        units = [name for name in grads if ".fourier." in name]
        assert units and all(not grads[name].grad.any() for name in units)


# --- shapes, gradients, modes, precision ----------------------------------------------------


@pytest.mark.parametrize("size", [(256, 256), (320, 320), (320, 368), (33, 47), (17, 16)])
def test_output_has_the_input_size(size):
    model = _tiny(chans=2).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, *size))
    assert out.shape == (1, 1, *size) and out.is_contiguous()


def test_gradients_reach_every_parameter():
    torch.manual_seed(6)
    model = _tiny(num_sfrir=2, num_sfrb=2).train()
    model(torch.randn(2, 1, 16, 12)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def _branch_threads(model: CLGNet, x: torch.Tensor) -> tuple:
    """The output and the threads each branch ran on (wavelet, spatial)."""
    seen = {}
    for name in ("wavelet_branch", "spatial_branch"):
        getattr(model, name).register_forward_hook(
            lambda module, args, out, name=name: seen.__setitem__(name, threading.get_ident()))
    out = model(x)
    return out, (seen["wavelet_branch"], seen["spatial_branch"])


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_inference_on_two_threads_runs_the_branches_side_by_side(mode):
    torch.manual_seed(9)
    model = _tiny(num_sfrb=2).eval()
    _randomise_bn(model)
    x = torch.randn(2, 1, 24, 20)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with mode():
            expected, (wavelet, spatial) = _branch_threads(model, x)
        assert wavelet == spatial == threading.get_ident()
        torch.set_num_threads(2)
        with mode():
            out, (wavelet, spatial) = _branch_threads(model, x)
        assert spatial == threading.get_ident() != wavelet
        assert torch.get_num_threads() == 2  # the caller's count is given back
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
        assert not out.requires_grad
    finally:
        torch.set_num_threads(threads)


def test_training_and_autograd_keep_the_branches_on_the_calling_thread():
    torch.manual_seed(10)
    model = _tiny()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for training, grad in [(True, False), (False, True), (True, True)]:
            with torch.set_grad_enabled(grad):
                _, (wavelet, spatial) = _branch_threads(model.train(training),
                                                        torch.randn(2, 1, 16, 16))
            assert wavelet == spatial == threading.get_ident()
    finally:
        torch.set_num_threads(threads)


def test_side_by_side_passes_on_an_error_and_restores_the_thread_count():
    threads = torch.get_num_threads()

    def fails() -> torch.Tensor:
        raise RuntimeError("branch failed")

    try:
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError, match="branch failed"):
            side_by_side(fails, lambda: torch.zeros(1))
        with pytest.raises(RuntimeError, match="branch failed"):
            side_by_side(lambda: torch.zeros(1), fails)
        assert torch.get_num_threads() == 2
        first, second = side_by_side(torch.get_num_threads, torch.get_num_threads)
        assert (first, second) == (1, 1)  # half the threads each
    finally:
        torch.set_num_threads(threads)


def test_eval_is_per_image_and_train_uses_batch_statistics():
    torch.manual_seed(7)
    model = _tiny()
    x = torch.randn(3, 1, 16, 16)
    bn = model.wavelet_branch.body[0].blocks[0].sfl1.fourier.bn
    model.eval()
    with torch.no_grad():
        alone, in_batch = model(x[:1]), model(x)[:1]
    torch.testing.assert_close(alone, in_batch, rtol=1e-4, atol=1e-5)  # batch size 1 works
    assert bn.num_batches_tracked == 0
    model.train()
    with torch.no_grad():
        alone, in_batch = model(x[:1]), model(x)[:1]
    assert not torch.allclose(alone, in_batch, atol=1e-4)  # statistics of the batch
    assert bn.num_batches_tracked == 2 and bn.running_mean.abs().sum() > 0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="global_module"):
        CLGNet(global_module="attention")
    with pytest.raises(ValueError, match="B x 1 x H x W"):
        _tiny()(torch.randn(1, 2, 8, 8))


def _record_fft_dtypes(monkeypatch) -> list:
    """The dtypes of every tensor the real FFTs get from now on (in the list returned):
    torch's rfftn/irfftn and rfft2/irfft2 and pocketfft's (scipy.fft) rfftn/irfftn, whichever
    layout ``models/layout.py`` picked."""
    seen = []
    for name in ("rfftn", "irfftn", "rfft2", "irfft2"):
        fft = getattr(torch.fft, name)
        monkeypatch.setattr(torch.fft, name,
                            lambda t, *a, _fft=fft, **k: seen.append(t.dtype) or _fft(t, *a, **k))
    for name in ("rfftn", "irfftn"):
        fft = getattr(scipy.fft, name)
        monkeypatch.setattr(scipy.fft, name, lambda a, *args, _fft=fft, **k: seen.append(
            torch.from_numpy(a[:0]).dtype) or _fft(a, *args, **k))
    return seen


def test_bfloat16_autocast_keeps_the_ffts_in_float32(monkeypatch):
    torch.manual_seed(8)
    model = _tiny(chans=8).eval()
    x = torch.randn(2, 1, 24, 20)
    seen = _record_fft_dtypes(monkeypatch)
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert seen and set(seen) <= {torch.float32, torch.complex64}
    assert torch.isfinite(out).all()
    assert (out.float() - expected).abs().max() < 0.05 * expected.abs().max()


def test_channels_last_model_and_input_give_the_same_output():
    torch.manual_seed(9)
    model = _tiny(in_chans=3).eval()
    x = torch.randn(2, 3, 16, 20)
    with torch.no_grad():
        expected = model(x)
        model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_runs_with_the_ffts_in_float32(dtype, monkeypatch):
    torch.manual_seed(10)
    model = _tiny(chans=8, num_sfrb=2)
    _randomise_bn(model)
    x = torch.randn(2, 1, 24, 20)
    seen = _record_fft_dtypes(monkeypatch)
    for train in (False, True):
        model.train(train)
        expected = model(x)
        half = copy.deepcopy(model).to(dtype)
        out = half(x.to(dtype))
        out.float().square().mean().backward()
        assert out.dtype == dtype and out.shape == x.shape
        assert (out.float() - expected).abs().max() < 0.05 * expected.abs().max()
        assert all(p.grad is not None and p.grad.dtype == dtype and p.grad.isfinite().all()
                   for p in half.parameters())
    assert seen and set(seen) <= {torch.float32, torch.complex64}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Torchinductor does not support code generation for complex")
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_torch_compile_gives_the_eager_output():
    torch.manual_seed(11)
    model = _tiny(chans=2).eval()
    x = torch.randn(1, 1, 12, 12)
    with torch.no_grad():
        expected = model(x)
        out = torch.compile(model)(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)

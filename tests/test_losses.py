"""Contrastive loss and frozen VGG19 features (paper Sec. 3.3; docs/design.md,
*Contrastive loss*).

Never touches the network: the ImageNet download is monkeypatched and TORCH_HOME points at
a temporary folder wherever the torch-hub cache is involved.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import shutil
import socket
import urllib.error
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from clgnet_fastmri.errors import UserError
from clgnet_fastmri.losses import (
    DEFAULT_LAYER_WEIGHTS,
    IMAGENET_FILE_NAME,
    IMAGENET_URL,
    CLGNetLoss,
    ContrastiveLoss,
    LossParts,
    VGG19Features,
    imagenet_weights_available,
    imagenet_weights_path,
    resolve_vgg19_weights,
)
from clgnet_fastmri.losses import vgg as vgg_module

LAMBDA3 = (0.25, 0.5, 1.0)


class TinyFeatures(nn.Module):
    """A small hand-built extractor: three maps of different sizes, per-sample independent.

    Records (batch size, grad enabled) of every call and keeps weak references to its outputs.
    """

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(3, 1, 3, 3, generator=gen), requires_grad=False)
        self.w2 = nn.Parameter(torch.randn(4, 3, 3, 3, generator=gen), requires_grad=False)
        self.calls: list = []
        self.outputs: list = []

    def forward(self, x):
        self.calls.append((x.shape[0], torch.is_grad_enabled()))
        f1 = torch.tanh(F.conv2d(x, self.w1.to(x.dtype), padding=1))
        f2 = F.relu(F.conv2d(F.avg_pool2d(f1, 2), self.w2.to(x.dtype), padding=1))
        f3 = (f2 * f2).mean(dim=1, keepdim=True)
        out = [f1, f2, f3]
        self.outputs += [weakref.ref(t) for t in out]
        return out


def reference_loss(features, output, target, undersampled, neg_index, weights, reduction,
                   use_negatives, eps):
    """L_CL written from its definition, one image at a time, with explicit loops."""
    batch = output.shape[0]

    def phi(image):
        return features(image.reshape(1, 1, *image.shape[-2:]))

    ap = [[None] * len(weights) for _ in range(batch)]
    an = [[None] * len(weights) for _ in range(batch)]
    sizes = [None] * len(weights)
    for i in range(batch):
        f_out, f_gt = phi(output[i]), phi(target[i])
        f_negs = [phi(undersampled[k]) for k in neg_index]
        for j in range(len(weights)):
            sizes[j] = f_out[j].numel()
            ap[i][j] = (f_out[j] - f_gt[j]).abs().sum()
            an[i][j] = sum((f_out[j] - f_neg[j]).abs().sum() for f_neg in f_negs)
    total = 0.0
    if not use_negatives:
        for j, w in enumerate(weights):
            total = total + w * sum(ap[i][j] for i in range(batch)) / (batch * sizes[j])
    elif reduction == "batch":
        for j, w in enumerate(weights):
            d_ap = sum(ap[i][j] for i in range(batch)) / (batch * sizes[j])
            d_an = sum(an[i][j] for i in range(batch)) / (batch * sizes[j])
            total = total + w * d_ap / (d_an + eps)
    else:
        for i in range(batch):
            for j, w in enumerate(weights):
                total = total + w * (ap[i][j] / sizes[j]) / (an[i][j] / sizes[j] + eps) / batch
    return total


def _images(batch, size=8, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(batch, 1, size, size, generator=gen, dtype=dtype)
    undersampled = target + 0.8 * torch.randn(batch, 1, size, size, generator=gen, dtype=dtype)
    output = 0.5 * (target + undersampled) + 0.1 * torch.randn(
        batch, 1, size, size, generator=gen, dtype=dtype
    )
    return output, target, undersampled


@pytest.fixture(scope="module")
def random_vgg():
    torch.manual_seed(0)
    return VGG19Features(weights=None)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch-hub cache under tmp_path; any download attempt is recorded and fails."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    attempts = []

    def no_network(url, dst, *args, **kwargs):
        attempts.append((url, dst))
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return attempts


# -- the definition ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reduction,use_negatives",
    [("batch", True), ("per_sample", True), ("batch", False), ("per_sample", False)],
)
def test_matches_direct_computation_values_and_gradients(reduction, use_negatives):
    features = TinyFeatures().double()
    output, target, undersampled = _images(batch=4)
    neg_index = torch.tensor([2, 0, 3])
    loss_fn = ContrastiveLoss(
        k_negatives=3, layer_weights=LAMBDA3, use_negatives=use_negatives,
        reduction=reduction, eps=1e-3, features=features,
    )
    out_a = output.clone().requires_grad_()
    got = loss_fn(out_a, target, undersampled, negative_index=neg_index)
    got.backward()
    out_b = output.clone().requires_grad_()
    expected = reference_loss(
        features, out_b, target, undersampled, neg_index.tolist(), LAMBDA3, reduction,
        use_negatives, eps=1e-3,
    )
    expected.backward()
    with torch.no_grad():  # the value does not depend on whether a gradient is prepared
        torch.testing.assert_close(
            loss_fn(output, target, undersampled, negative_index=neg_index), got.detach(),
            rtol=1e-14, atol=0,
        )
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(out_a.grad, out_b.grad, rtol=1e-10, atol=1e-14)
    assert out_a.grad.abs().sum() > 0


def test_reductions_differ_and_agree_for_one_sample():
    features = TinyFeatures().double()
    output, target, undersampled = _images(batch=3, seed=1)
    kwargs = dict(k_negatives=3, layer_weights=LAMBDA3, features=features)
    batch = ContrastiveLoss(reduction="batch", **kwargs)(output, target, undersampled)
    per_sample = ContrastiveLoss(reduction="per_sample", **kwargs)(output, target, undersampled)
    assert not torch.isclose(batch, per_sample)
    one = (output[:1], target[:1], undersampled[:1])
    torch.testing.assert_close(
        ContrastiveLoss(reduction="batch", **kwargs)(*one),
        ContrastiveLoss(reduction="per_sample", **kwargs)(*one),
    )


def test_no_negatives_is_weighted_positive_distance():
    features = TinyFeatures().double()
    output, target, _ = _images(batch=3, seed=2)
    loss_fn = ContrastiveLoss(layer_weights=LAMBDA3, use_negatives=False, features=features)
    got = loss_fn(output, target)  # no undersampled inputs needed
    f_out, f_gt = features(output), features(target)
    expected = sum(w * (a - b).abs().mean() for w, a, b in zip(LAMBDA3, f_out, f_gt))
    torch.testing.assert_close(got, expected)
    features.calls.clear()
    loss_fn(output, target)
    assert features.calls == [(3, False), (3, True)]  # ground truth only, then the anchor


def test_k_larger_than_batch_uses_every_input_once():
    features = TinyFeatures().double()
    output, target, undersampled = _images(batch=3, seed=3)
    loss_fn = ContrastiveLoss(k_negatives=6, layer_weights=LAMBDA3, features=features)
    assert loss_fn.draw_negatives(3).tolist() == [0, 1, 2]
    got = loss_fn(output, target, undersampled)
    expected = reference_loss(
        features, output, target, undersampled, [0, 1, 2], LAMBDA3, "batch", True, 1e-7
    )
    torch.testing.assert_close(got, expected)


def test_negative_draw_is_distinct_and_follows_the_generator():
    loss_fn = ContrastiveLoss(k_negatives=6, features=TinyFeatures())
    draws = [loss_fn.draw_negatives(10) for _ in range(20)]
    for index in draws:
        assert len(index) == 6 and len(set(index.tolist())) == 6
        assert 0 <= index.min() and index.max() < 10
    assert len({tuple(d.tolist()) for d in draws}) > 1  # random, not a fixed subset
    seeded = [
        ContrastiveLoss(features=TinyFeatures(), generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert torch.equal(seeded[0].draw_negatives(10), seeded[1].draw_negatives(10))
    torch.manual_seed(3)
    first = loss_fn.draw_negatives(10)
    torch.manual_seed(3)
    assert torch.equal(first, loss_fn.draw_negatives(10))  # global RNG without a generator


# -- behaviour with the VGG19 extractor ---------------------------------------------------------


def test_gradients_reach_the_output_and_never_vgg(random_vgg):
    output, target, undersampled = _images(batch=3, size=32, dtype=torch.float32)
    output.requires_grad_()
    loss = ContrastiveLoss(k_negatives=2, features=random_vgg)(output, target, undersampled)
    loss.backward()
    assert torch.isfinite(output.grad).all() and output.grad.abs().sum() > 0
    assert list(random_vgg.parameters()) == []
    for tensor in random_vgg.conv_weights():
        assert not tensor.requires_grad and tensor.grad is None


@pytest.mark.parametrize("reduction", ["batch", "per_sample"])
def test_moving_towards_gt_lowers_and_towards_negative_raises(random_vgg, reduction):
    output, target, undersampled = _images(batch=2, size=32, seed=4, dtype=torch.float32)
    loss_fn = ContrastiveLoss(k_negatives=2, reduction=reduction, features=random_vgg)

    def loss_at(o):
        return loss_fn(o, target, undersampled).item()

    base = loss_at(output)
    assert loss_at(output + 0.5 * (target - output)) < base
    assert loss_at(output + 0.9 * (target - output)) < loss_at(output + 0.5 * (target - output))
    assert loss_at(output + 0.5 * (undersampled - output)) > base


@pytest.mark.parametrize("batch,k", [(1, 6), (2, 1), (4, 3), (5, 6)])
def test_two_vgg_forwards_per_evaluation_whatever_k_and_b(random_vgg, batch, k):
    calls = []
    handle = random_vgg.register_forward_hook(
        lambda module, args, out: calls.append((args[0].shape[0], torch.is_grad_enabled()))
    )
    try:
        output, target, undersampled = _images(batch=batch, size=32, dtype=torch.float32)
        loss_fn = CLGNetLoss(contrastive=ContrastiveLoss(k_negatives=k, features=random_vgg))
        loss_fn(output.requires_grad_(), target, undersampled).total.backward()
    finally:
        handle.remove()
    # one no-grad forward over [GT; K shared negatives], one forward with grad over O
    assert calls == [(batch + min(k, batch), False), (batch, True)]


def test_alpha_zero_runs_no_vgg_and_loads_none(random_vgg, offline_hub):
    calls = []
    handle = random_vgg.register_forward_hook(lambda *a: calls.append(1))
    try:
        output, target, undersampled = _images(batch=2, size=32, dtype=torch.float32)
        output.requires_grad_()
        with_module = CLGNetLoss(alpha=0.0, contrastive=ContrastiveLoss(features=random_vgg))
        parts = with_module(output, target, undersampled)
    finally:
        handle.remove()
    assert calls == []
    assert parts.contrastive.item() == 0.0 and parts.total is parts.l1
    parts.total.backward()
    # alpha=0 without a contrastive module: no VGG weights looked up, none downloaded.
    CLGNetLoss(alpha=0.0)(output.detach(), target)
    assert offline_hub == []


def test_clgnet_loss_parts(random_vgg):
    output, target, undersampled = _images(batch=3, size=32, dtype=torch.float32)
    contrastive = ContrastiveLoss(k_negatives=2, features=random_vgg)
    loss_fn = CLGNetLoss(alpha=0.05, contrastive=contrastive)
    index = torch.tensor([1, 2])
    # fastmri's modules use B x H x W images: accepted as well
    parts = loss_fn(output[:, 0], target[:, 0], undersampled[:, 0], negative_index=index)
    assert isinstance(parts, LossParts)
    torch.testing.assert_close(parts.l1, F.l1_loss(output, target))
    torch.testing.assert_close(
        parts.contrastive, contrastive(output, target, undersampled, negative_index=index)
    )
    torch.testing.assert_close(parts.total, parts.l1 + 0.05 * parts.contrastive)
    assert contrastive.layer_weights == DEFAULT_LAYER_WEIGHTS == (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1)


def test_shape_and_configuration_errors(random_vgg):
    output, target, undersampled = _images(batch=2, size=32, dtype=torch.float32)
    loss_fn = ContrastiveLoss(features=random_vgg)
    with pytest.raises(ValueError, match="target has shape"):
        loss_fn(output, target[:1], undersampled)
    with pytest.raises(ValueError, match="B x H x W or B x 1 x H x W"):
        loss_fn(output.repeat(1, 3, 1, 1), target, undersampled)
    with pytest.raises(ValueError, match="undersampled inputs are needed"):
        loss_fn(output, target)
    with pytest.raises(ValueError, match="3 feature maps but 5 layer weights"):
        ContrastiveLoss(features=TinyFeatures())(output, target, undersampled)
    with pytest.raises(ValueError, match="reduction"):
        ContrastiveLoss(reduction="sum", features=random_vgg)


def test_vgg_runs_in_bf16_under_autocast_and_the_loss_stays_within_one_percent(random_vgg):
    output, target, undersampled = _images(batch=4, size=32, dtype=torch.float32)
    loss_fn = ContrastiveLoss(k_negatives=3, features=random_vgg)
    index = torch.tensor([2, 0, 3])
    exact = loss_fn(output, target, undersampled, negative_index=index)
    output.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = random_vgg(output)
        loss = loss_fn(output, target, undersampled, negative_index=index)
    assert all(f.dtype == torch.bfloat16 for f in features)  # the convolutions ran in bf16
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, exact, rtol=0.01, atol=0)
    loss.backward()
    assert output.grad.dtype == torch.float32 and torch.isfinite(output.grad).all()


@pytest.mark.parametrize("reduction", ["batch", "per_sample"])
def test_half_precision_gradient_does_not_underflow(reduction):
    # One large "layer" (the image itself): the gradient per element is ~1 / (B * N) ~ 2e-6,
    # below float16's normal range; with a GradScaler-like factor it must come out right.
    images = _images(batch=2, size=512, seed=5, dtype=torch.float32)
    # float16-representable inputs, so both runs see the same signs of the differences
    output, target, undersampled = (x.half().float() for x in images)
    loss_fn = ContrastiveLoss(
        k_negatives=2, layer_weights=(1.0,), reduction=reduction, features=lambda x: [x]
    )
    grads = {}
    for dtype in (torch.float32, torch.float16):
        o = output.to(dtype).detach().requires_grad_()
        (1024.0 * loss_fn(o, target.to(dtype), undersampled.to(dtype))).backward()
        grads[dtype] = o.grad.float()
    torch.testing.assert_close(grads[torch.float16], grads[torch.float32], rtol=2e-3, atol=1e-6)


def test_feature_maps_are_not_kept_after_the_call():
    features = TinyFeatures()
    output, target, undersampled = _images(batch=3, dtype=torch.float32)
    output.requires_grad_()
    loss_fn = ContrastiveLoss(k_negatives=2, layer_weights=LAMBDA3, features=features)
    loss = loss_fn(output, target, undersampled)
    loss.backward()
    del loss
    with torch.no_grad():
        loss_fn(output, target, undersampled)
    gc.collect()
    assert len(features.outputs) == 12 and all(ref() is None for ref in features.outputs)


# -- module contract: frozen, eval, moved by .to(), never in a checkpoint -------------------------


class _Holder(nn.Module):
    def __init__(self, vgg):
        super().__init__()
        self.net = nn.Conv2d(1, 1, 3, padding=1)
        self.loss = CLGNetLoss(contrastive=ContrastiveLoss(features=vgg))


def test_vgg_not_in_state_dict_and_stays_in_eval(random_vgg):
    holder = _Holder(random_vgg)
    assert set(holder.state_dict()) == {"net.weight", "net.bias"}
    assert [n for n, _ in holder.named_parameters()] == ["net.weight", "net.bias"]
    fresh = _Holder(random_vgg)
    fresh.load_state_dict(holder.state_dict(), strict=True)  # a checkpoint without VGG loads
    holder.train()
    assert holder.training and holder.loss.contrastive.training
    assert not random_vgg.training
    holder.eval()
    holder.train(True)
    assert not random_vgg.training


def test_to_moves_and_converts_vgg_weights():
    vgg = VGG19Features(weights=None)
    holder = _Holder(vgg)
    holder.to(torch.float64)
    assert vgg.dtype == torch.float64
    assert all(t.dtype == torch.float64 for t in vgg.conv_weights())
    output, target, undersampled = _images(batch=2, size=16)
    assert holder.loss(output, target, undersampled).total.dtype == torch.float64
    holder.to("cpu", torch.float32)
    assert vgg.dtype == torch.float32 and vgg.device.type == "cpu"


# -- weights: torchvision's ImageNet file, local files, random, clear messages ----------------


@pytest.fixture(scope="module")
def torchvision_features():
    """torchvision's own vgg19().features with random weights (classifier never allocated)."""
    with torch.device("meta"):
        model = models.vgg19()
    features = model.features.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(1)
    for module in features:
        if isinstance(module, nn.Conv2d):
            with torch.no_grad():
                module.weight.normal_(0, (2.0 / (module.out_channels * 9)) ** 0.5, generator=gen)
                module.bias.normal_(0, 0.01, generator=gen)
    return features.eval()


def _torchvision_slices(features, x):
    """The reference: torchvision's layers on the grayscale image repeated to RGB."""
    out, bounds = [], [(0, 2), (2, 7), (7, 12), (12, 21), (21, 30)]
    h = x.repeat(1, 3, 1, 1)
    for start, stop in bounds:
        h = features[start:stop](h)
        out.append(h)
    return out


def _save_vgg19_file(features, path, legacy=False):
    """A (trimmed) state dict of torchvision's vgg19(): ``features.*`` plus a classifier key.

    ``legacy``: torchvision's vgg19-dcbb9e9d.pth predates the zip format.
    """
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_features_match(vgg, torchvision_features):
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = _torchvision_slices(torchvision_features, x)
        got = vgg(x)
    assert len(got) == 5
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_imagenet_weights_are_torchvisions():
    weights = models.VGG19_Weights.IMAGENET1K_V1
    assert IMAGENET_URL == weights.url and IMAGENET_URL.endswith("/" + IMAGENET_FILE_NAME)
    assert vgg_module._IMAGENET_HASH_PREFIX == "dcbb9e9d"


def test_random_weights_follow_the_global_seed_and_are_recorded(offline_hub):
    torch.manual_seed(5)
    first = VGG19Features(weights=None)
    torch.manual_seed(5)
    second = VGG19Features(weights="random")
    for a, b in zip(first.conv_weights(), second.conv_weights()):
        assert torch.equal(a, b)
    assert first.weights_record == {"vgg_weights": "random", "path": None, "sha256": None}
    assert first.weights_used.warning is None and first.weights_used.argument is None
    assert offline_hub == []


def test_local_state_dict_file_matches_torchvision_and_is_recorded(tmp_path,
                                                                   torchvision_features,
                                                                   offline_hub):
    prefixed = tmp_path / "vgg19.pth"
    digest = _save_vgg19_file(torchvision_features[:30], prefixed)
    plain = tmp_path / "features.pt"  # a state dict of vgg19().features (all 16 convs)
    torch.save(torchvision_features.state_dict(), plain)
    for weights in (prefixed, str(plain)):
        vgg = VGG19Features(weights=weights)
        _assert_features_match(vgg, torchvision_features)
    record = VGG19Features(weights=str(prefixed)).weights_record
    assert record == {"vgg_weights": "file", "path": str(prefixed), "sha256": digest}
    assert json.loads(json.dumps(record)) == record
    assert resolve_vgg19_weights(str(prefixed)).argument == str(prefixed)
    assert offline_hub == []


def test_imagenet_and_auto_use_the_cached_file(tmp_path, torchvision_features, offline_hub,
                                               monkeypatch):
    cache = imagenet_weights_path()
    assert cache == tmp_path / "torch" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    digest = _save_vgg19_file(torchvision_features, cache, legacy=True)
    # the test file stands in for torchvision's: its own hash prefix is the one to check
    monkeypatch.setattr(vgg_module, "_IMAGENET_HASH_PREFIX", digest[:8])
    assert imagenet_weights_available()
    for choice in ("imagenet", "auto"):
        vgg = VGG19Features(weights=choice)
        _assert_features_match(vgg, torchvision_features)
        assert vgg.weights_record == {"vgg_weights": "imagenet", "path": str(cache),
                                      "sha256": digest}
        assert vgg.weights_used.argument == "imagenet"
    assert offline_hub == []


def test_auto_downloads_a_missing_file_through_torch_hub(tmp_path, torchvision_features,
                                                         monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    source = tmp_path / "server" / IMAGENET_FILE_NAME
    digest = _save_vgg19_file(torchvision_features, source, legacy=True)
    monkeypatch.setattr(vgg_module, "_IMAGENET_HASH_PREFIX", digest[:8])
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix, socket.getdefaulttimeout()))
        shutil.copyfile(source, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    vgg = VGG19Features(weights="auto", progress=False)
    cache = imagenet_weights_path()
    # torchvision's URL into the torch-hub cache, with the hash check and a socket timeout
    assert calls == [(IMAGENET_URL, str(cache), digest[:8], vgg_module.DOWNLOAD_TIMEOUT_S)]
    assert socket.getdefaulttimeout() is None  # restored
    assert vgg.weights_record == {"vgg_weights": "imagenet", "path": str(cache), "sha256": digest}
    _assert_features_match(vgg, torchvision_features)
    VGG19Features(weights="imagenet")
    assert len(calls) == 1  # cached from now on


def test_failed_download_imagenet_stops_auto_falls_back_with_a_warning(tmp_path, offline_hub,
                                                                       caplog):
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    with pytest.raises(UserError) as info:
        VGG19Features(weights="imagenet")
    message = str(info.value)
    assert "\n" not in message
    assert str(expected) in message and IMAGENET_URL in message
    assert "weights=None" in message and "weights=<path>" in message
    assert "no network in tests" in message
    assert offline_hub == [(IMAGENET_URL, str(expected))]
    with pytest.raises(UserError, match="vgg19-dcbb9e9d.pth"):
        ContrastiveLoss()  # the default extractor is ImageNet VGG19

    with caplog.at_level(logging.WARNING, logger=vgg_module.__name__):
        vgg = VGG19Features(weights="auto")
    assert len(offline_hub) == 3  # auto tried to download too
    assert vgg.weights_record == {"vgg_weights": "random", "path": None, "sha256": None}
    warning = vgg.weights_used.warning
    assert "randomly initialised VGG19" in warning and str(expected) in warning
    assert "no network in tests" in warning
    assert [r.getMessage() for r in caplog.records] == [f"WARNING: {warning}"]
    assert not expected.exists()


def test_a_silent_server_times_out_instead_of_hanging(tmp_path, monkeypatch):
    """torch.hub opens URLs without a timeout; the download must not wait forever."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setattr(vgg_module, "DOWNLOAD_TIMEOUT_S", 0.5)
    real_download = torch.hub.download_url_to_file
    server = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    silent_url = f"http://127.0.0.1:{server.getsockname()[1]}/{IMAGENET_FILE_NAME}"

    def to_silent_server(url, dst, *args, **kwargs):
        return real_download(silent_url, dst, *args, **kwargs)

    monkeypatch.setattr(torch.hub, "download_url_to_file", to_silent_server)
    try:
        resolved = resolve_vgg19_weights("auto", progress=False)
    finally:
        server.close()
    assert resolved.kind == "random" and "timed out" in resolved.warning
    assert socket.getdefaulttimeout() is None
    assert list((tmp_path / "torch").rglob("*vgg19*")) == []  # no partial file left


def test_damaged_cached_file_is_refused_not_replaced(offline_hub):
    cache = imagenet_weights_path()
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"half a download")
    for choice in ("imagenet", "auto"):
        with pytest.raises(UserError, match=r"vgg19-dcbb9e9d.pth: SHA-256 .* does not match "
                                            r"torchvision's vgg19-dcbb9e9d.pth; delete it"):
            VGG19Features(weights=choice)
    assert offline_hub == []


def test_bad_local_files_give_clear_messages(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(UserError, match="nowhere.pth: VGG19 weights file not found"):
        VGG19Features(weights=missing)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a torch file")
    with pytest.raises(UserError, match="garbage.pth: cannot be read as a VGG19 state dict"):
        VGG19Features(weights=garbage)

    pickled = tmp_path / "module.pth"  # a pickled module: refused by weights_only=True
    torch.save(nn.Conv2d(3, 64, 3), pickled)
    with pytest.raises(UserError, match="module.pth: cannot be read as a VGG19 state dict"):
        VGG19Features(weights=pickled)

    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(UserError, match="tensor.pth: not a VGG19 state dict .*Tensor"):
        VGG19Features(weights=tensor)

    foreign = tmp_path / "resnet_like.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, foreign)
    with pytest.raises(UserError, match="resnet_like.pth: not a VGG19 state dict.*'conv1.weight'"):
        VGG19Features(weights=foreign)

    vgg16_like = tmp_path / "vgg16_like.pth"  # vgg16 has a max-pool at index 16, no conv
    convs = {0: 3, 2: 64, 5: 64, 7: 128, 10: 128, 12: 256, 14: 256}
    torch.save(
        {f"features.{i}.{p}": (torch.zeros(256 if i >= 10 else 128 if i >= 5 else 64, c, 3, 3)
                               if p == "weight" else torch.zeros(1))
         for i, c in convs.items() for p in ("weight", "bias")},
        vgg16_like,
    )
    with pytest.raises(UserError, match="vgg16_like.pth: not a VGG19 state dict"):
        VGG19Features(weights=vgg16_like)

    wrong_shape = tmp_path / "wrong_shape.pth"
    torch.save({"0.weight": torch.zeros(64, 1, 3, 3), "0.bias": torch.zeros(64)}, wrong_shape)
    with pytest.raises(UserError, match=r"'0.weight' has shape \(64, 1, 3, 3\)"):
        VGG19Features(weights=wrong_shape)

    for path in (missing, garbage, pickled, tensor, foreign, vgg16_like, wrong_shape):
        with pytest.raises(UserError) as info:
            VGG19Features(weights=path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)

"""The synthetic dataset generator (``clgnet-fastmri make-data``) against unmodified fastmri."""

from __future__ import annotations

import argparse
import hashlib
import xml.etree.ElementTree as etree
from pathlib import Path

import fastmri
import h5py
import numpy as np
import pytest
import torch
from fastmri.data import SliceDataset
from fastmri.data import transforms as T
from fastmri.data.mri_data import et_query
from fastmri.data.subsample import RandomMaskFunc

from clgnet_fastmri.cli import main
from clgnet_fastmri.data import synthetic as S
from clgnet_fastmri.data.checks import HEADER_FIELDS
from clgnet_fastmri.errors import UserError

SIZE = 32
SLICES = 3
COILS = 4
SPLITS = {"train": 2, "val": 1, "test": 2}


def _recons_key(challenge: str) -> str:
    return "reconstruction_esc" if challenge == "singlecoil" else "reconstruction_rss"


def _target_from_kspace(kspace: np.ndarray, size: int) -> torch.Tensor:
    """Centre crop of |ifft2c(kspace)| (RSS over coils), with fastmri's torch functions."""
    image = fastmri.complex_abs(fastmri.ifft2c(T.to_tensor(kspace)))
    if kspace.ndim == 4:  # (slices, coils, rows, cols)
        image = fastmri.rss(image, dim=1)
    return T.center_crop(image, (size, size))


def _assert_consistent(kspace: np.ndarray, target: np.ndarray) -> None:
    expected = _target_from_kspace(kspace, target.shape[-1]).numpy()
    np.testing.assert_allclose(target, expected, rtol=1e-4, atol=1e-5 * float(target.max()))


@pytest.fixture(scope="module", params=[("knee", "singlecoil"), ("brain", "multicoil")],
                ids=["knee-singlecoil", "brain-multicoil"])
def dataset(request, tmp_path_factory):
    anatomy, challenge = request.param
    root = tmp_path_factory.mktemp(f"{anatomy}_{challenge}")
    summary = S.make_dataset(root, anatomy=anatomy, challenge=challenge, splits=SPLITS,
                             num_slices=SLICES, size=SIZE,
                             num_coils=COILS if challenge == "multicoil" else None,
                             seed=3, progress=False)
    return summary


# --------------------------------------------------------------------------------------------
# Layout, consistency, headers


def test_layout(dataset):
    ch = dataset.challenge
    assert sorted(p.name for p in dataset.root.iterdir()) == sorted(
        f"{ch}_{s}" for s in ("train", "val", "test", "test_gt"))
    for split, n in SPLITS.items():
        assert len(list((dataset.root / f"{ch}_{split}").iterdir())) == n
    test_names = sorted(p.name for p in (dataset.root / f"{ch}_test").iterdir())
    assert test_names == sorted(p.name for p in (dataset.root / f"{ch}_test_gt").iterdir())
    rows, cols = S.kspace_shape(dataset.anatomy, SIZE)
    coils = (COILS,) if ch == "multicoil" else ()
    assert dataset.kspace_shape == (SLICES, *coils, rows, cols)
    assert dataset.target_shape == (SLICES, SIZE, SIZE)
    assert "wrote a synthetic" in str(dataset)


def test_targets_are_centre_crops_of_the_kspace(dataset):
    key = _recons_key(dataset.challenge)
    for path in dataset.files["train"] + dataset.files["val"]:
        with h5py.File(path, "r") as hf:
            kspace, target = hf["kspace"][()], hf[key][()]
            assert kspace.dtype == np.complex64 and target.dtype == np.float32
            assert kspace.shape == dataset.kspace_shape
            _assert_consistent(kspace, target)
            assert hf.attrs["max"] == pytest.approx(float(target.max()))
            assert hf.attrs["norm"] == pytest.approx(float(np.linalg.norm(target)), rel=1e-5)
            assert hf.attrs["acquisition"] in S.SPECS[dataset.anatomy].acquisitions
            assert isinstance(hf.attrs["patient_id"], str)


def test_test_split_is_masked_and_gt_matches(dataset):
    key = _recons_key(dataset.challenge)
    accelerations = set()
    for path, gt_path in zip(dataset.files["test"], dataset.files["test_gt"]):
        with h5py.File(path, "r") as hf, h5py.File(gt_path, "r") as gt:
            assert key not in hf
            mask = hf["mask"][()]
            assert mask.shape == (hf["kspace"].shape[-1],) and mask.dtype == bool
            acc = int(hf.attrs["acceleration"])
            accelerations.add(acc)
            num_low = int(hf.attrs["num_low_frequency"])
            assert num_low == round(mask.size * S.center_fraction(acc))
            kspace = hf["kspace"][()]
            assert not np.any(kspace[..., ~mask])  # unsampled columns are zero
            assert np.count_nonzero(np.abs(kspace).sum(axis=tuple(range(kspace.ndim - 1))))
            assert gt[key].shape == (SLICES, SIZE, SIZE)
            for name in ("acquisition", "acceleration", "max", "norm"):
                assert name in gt.attrs
            assert int(gt.attrs["acceleration"]) == acc
            assert gt.attrs["acquisition"] == hf.attrs["acquisition"]
            assert gt.attrs["max"] == pytest.approx(float(gt[key][()].max()))
    assert accelerations <= {4, 8}


def test_project_file_checks_accept_the_files(dataset):
    from clgnet_fastmri.data.checks import check_volume

    for key in ("train", "val", "test"):
        for path in dataset.files[key]:
            assert check_volume(path, dataset.challenge, need_target=key != "test") == SLICES


def _leaf_paths(element, path=()) -> list:
    """Paths (tag names without namespace) of the leaves of an XML tree, sorted."""
    children = list(element)
    if not children:
        return [list(path)]
    return sorted(p for c in children for p in _leaf_paths(c, path + (c.tag.split("}")[1],)))


def test_header_parses_like_slicedataset(dataset):
    ch = dataset.challenge
    rows, cols = S.kspace_shape(dataset.anatomy, SIZE)
    left, right = S.acquired_columns(dataset.anatomy, cols)
    ds = SliceDataset(dataset.root / f"{ch}_train", ch, use_dataset_cache=False)
    assert len(ds) == SPLITS["train"] * SLICES
    for sample in ds.raw_samples:
        meta = sample.metadata
        assert meta["encoding_size"] == (rows, cols, 1)
        assert meta["recon_size"] == (SIZE, SIZE, 1)
        assert (meta["padding_left"], meta["padding_right"]) == (left, right)
        for name in ("acquisition", "max", "norm", "patient_id"):
            assert name in meta
    with h5py.File(dataset.files["train"][0], "r") as hf:
        root = etree.fromstring(hf["ismrmrd_header"][()])
        kspace = hf["kspace"][()]
    assert root.tag == "{http://www.ismrm.org/ISMRMRD}ismrmrdHeader"
    # The header holds the fields fastmri reads and nothing else.
    assert _leaf_paths(root) == sorted(HEADER_FIELDS)
    # The unacquired columns the header announces are zero in k-space.
    assert not np.any(kspace[..., :left]) and not np.any(kspace[..., right:])


# --------------------------------------------------------------------------------------------
# fastmri's own loaders and scoring


def test_slicedataset_with_unet_transform(dataset):
    ch = dataset.challenge
    mask_func = RandomMaskFunc([0.08, 0.04], [4, 8])
    for split in ("train", "val", "test"):
        transform = T.UnetDataTransform(ch, mask_func=None if split == "test" else mask_func)
        ds = SliceDataset(dataset.root / f"{ch}_{split}", ch, transform=transform,
                          use_dataset_cache=False)
        assert len(ds) == SPLITS[split] * SLICES
        sample = ds[len(ds) - 1]
        assert sample.image.shape == (SIZE, SIZE)
        assert torch.isfinite(sample.image).all()
        if split != "test":
            assert sample.target.shape == (SIZE, SIZE)
            assert sample.max_value > 0


def test_fastmri_datamodule(dataset, tmp_path, monkeypatch):
    from fastmri.pl_modules import FastMriDataModule

    monkeypatch.chdir(tmp_path)  # fastmri's cache pickle would land here
    ch = dataset.challenge
    mask_func = RandomMaskFunc([0.08, 0.04], [4, 8])
    dm = FastMriDataModule(
        data_path=dataset.root, challenge=ch,
        train_transform=T.UnetDataTransform(ch, mask_func=mask_func),
        val_transform=T.UnetDataTransform(ch, mask_func=mask_func),
        test_transform=T.UnetDataTransform(ch), batch_size=2, num_workers=0,
        use_dataset_cache_file=False)
    dm.prepare_data()
    for loader, split in ((dm.train_dataloader(), "train"), (dm.val_dataloader(), "val"),
                          (dm.test_dataloader(), "test")):
        assert len(loader.dataset) == SPLITS[split] * SLICES
        batch = next(iter(loader))
        assert batch.image.shape == (2, SIZE, SIZE)
        assert torch.isfinite(batch.image).all()
        if split != "test":
            assert batch.target.shape == (2, SIZE, SIZE)
    assert not list(tmp_path.iterdir())  # no dataset_cache.pkl


def test_fastmri_evaluate_scores_zero_filled(dataset, tmp_path):
    from fastmri.evaluate import evaluate

    ch = dataset.challenge
    recons = {}
    for path in dataset.files["test"]:
        with h5py.File(path, "r") as hf:
            recons[path.name] = _target_from_kspace(hf["kspace"][()], SIZE).numpy()
    fastmri.save_reconstructions(recons, tmp_path)
    args = argparse.Namespace(target_path=dataset.root / f"{ch}_test_gt",
                              predictions_path=tmp_path, acquisition=None, acceleration=None)
    means = evaluate(args, _recons_key(ch)).means()
    assert 8.0 < float(means["PSNR"]) < 40.0
    assert 0.05 < float(np.squeeze(means["SSIM"])) < 0.95
    assert 0.0 < float(means["NMSE"]) < 1.0


# --------------------------------------------------------------------------------------------
# In-memory volumes: consistency, difficulty, noise, determinism


@pytest.mark.parametrize("anatomy,challenge", [("knee", "singlecoil"), ("knee", "multicoil"),
                                               ("brain", "singlecoil"), ("brain", "multicoil")])
def test_make_volume(anatomy, challenge):
    vol = S.make_volume(anatomy, challenge=challenge, size=48, num_slices=2, seed=1,
                        num_coils=3 if challenge == "multicoil" else None)
    rows, cols = S.kspace_shape(anatomy, 48)
    coils = (3,) if challenge == "multicoil" else ()
    assert vol.kspace.shape == (2, *coils, rows, cols) and vol.kspace.dtype == np.complex64
    assert vol.target.shape == vol.clean_target.shape == (2, 48, 48)
    _assert_consistent(vol.kspace, vol.target)
    # Intensities on the scale of real fastMRI data.
    assert 5e-5 < vol.attrs["max"] < 5e-3
    # A smooth, non-zero image phase: k-space is not Hermitian.
    k = vol.kspace[0] if challenge == "singlecoil" else vol.kspace[0, 0]
    left, right = vol.padding
    k = k[1:, 1:]  # the part whose mirror image about the DC sample lies on the grid
    mirrored = np.conj(k[::-1, ::-1])
    assert np.linalg.norm(k - mirrored) > 0.5 * np.linalg.norm(k)


def test_sizes_scale_and_stay_even():
    assert S.kspace_shape("knee") == (640, 368)
    assert S.kspace_shape("brain") == (256, 256)
    for size in range(16, 200, 2):
        for anatomy in S.ANATOMIES:
            rows, cols = S.kspace_shape(anatomy, size)
            assert rows % 2 == 0 and cols % 2 == 0 and cols >= size


@pytest.mark.parametrize("anatomy,acquisition", [("knee", "CORPD_FBK"), ("brain", "AXT1")])
def test_zero_filled_is_far_from_the_target(anatomy, acquisition):
    """At 4x the data is not trivially easy: low zero-filled PSNR and visible aliasing.

    (Fat-suppressed knees, at SNR ~10, bury much of the aliasing in air under the noise.)
    """
    from fastmri.evaluate import psnr

    size = 64
    vol = S.make_volume(anatomy, size=size, num_slices=3, seed=0, acquisition=acquisition)
    kspace = T.to_tensor(vol.kspace)
    masked, _, _ = T.apply_mask(kspace, RandomMaskFunc([0.08], [4]), seed=5)
    zero_filled = _target_from_kspace(torch.view_as_complex(masked).numpy(), size).numpy()
    assert psnr(vol.target, zero_filled) < 32.0
    # Air beside the object in the same rows receives aliasing along the phase-encoding
    # direction, far above the target's noise floor there.
    clean = vol.clean_target
    air = clean < 1e-3 * clean.max()
    rows_with_object = (clean > 0.2 * clean.max()).any(axis=-1, keepdims=True)
    region = air & rows_with_object
    assert region.sum() > 50
    assert (zero_filled[region] ** 2).mean() > 3.0 * (vol.target[region] ** 2).mean()


@pytest.mark.parametrize("anatomy,challenge", [("knee", "singlecoil"), ("brain", "singlecoil"),
                                               ("brain", "multicoil")])
def test_noise_level_gives_the_stated_snr(anatomy, challenge):
    coils = 4 if challenge == "multicoil" else 1
    vol = S.make_volume(anatomy, challenge=challenge, size=64, num_slices=3, seed=2,
                        num_coils=coils if challenge == "multicoil" else None)
    # In air the target is |complex Gaussian noise| (RSS over the coils): E[t^2] = 2 s^2 per
    # coil, less the unacquired (zero) k-space columns.
    air = vol.clean_target < 1e-3 * vol.clean_target.max()
    left, right = vol.padding
    acquired = (right - left) / vol.kspace.shape[-1]
    sigma = np.sqrt((vol.target[air] ** 2).mean() / (2 * coils * acquired))
    assert sigma == pytest.approx(vol.noise_std, rel=0.1)
    fg = vol.clean_target > 0.1 * np.percentile(vol.clean_target, 99.5)
    snr = vol.clean_target[fg].mean() / sigma
    assert snr == pytest.approx(vol.snr, rel=0.15)
    low, high = S._SNR_RANGE[vol.acquisition]
    assert low <= vol.snr <= high


def test_fat_suppressed_knee_is_darker_and_noisier():
    pd = S.make_volume("knee", size=64, num_slices=2, seed=4, acquisition="CORPD_FBK")
    fs = S.make_volume("knee", size=64, num_slices=2, seed=4, acquisition="CORPDFS_FBK")
    assert fs.clean_target.mean() < 0.75 * pd.clean_target.mean()
    assert fs.snr < pd.snr


def test_make_volume_is_deterministic():
    a = S.make_volume("knee", size=32, num_slices=2, seed=7)
    b = S.make_volume("knee", size=32, num_slices=2, seed=7)
    c = S.make_volume("knee", size=32, num_slices=2, seed=8)
    np.testing.assert_array_equal(a.kspace, b.kspace)
    np.testing.assert_array_equal(a.target, b.target)
    assert a.header == b.header and a.attrs == b.attrs
    assert not np.array_equal(a.kspace, c.kspace)


def _read(path: Path) -> dict:
    with h5py.File(path, "r") as hf:
        out = {k: hf[k][()] for k in hf}
        out.update({f"attr:{k}": v for k, v in hf.attrs.items()})
    return out


def _assert_same_file(p: Path, q: Path) -> None:
    a, b = _read(p), _read(q)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{p.name}: {key}")


def test_dataset_determinism_and_stability(tmp_path):
    kw = dict(anatomy="brain", size=SIZE, num_slices=2, progress=False)
    one = S.make_dataset(tmp_path / "one", splits={"train": 2, "test": 1}, seed=5, **kw)
    two = S.make_dataset(tmp_path / "two", splits={"train": 2, "test": 1}, seed=5, **kw)
    more = S.make_dataset(tmp_path / "more", splits={"train": 3, "test": 2}, seed=5, **kw)
    other = S.make_dataset(tmp_path / "other", splits={"train": 2, "test": 1}, seed=6, **kw)
    for key in ("train", "test", "test_gt"):
        for i, path in enumerate(one.files[key]):
            _assert_same_file(path, two.files[key][i])
            _assert_same_file(path, more.files[key][i])  # more volumes: earlier unchanged
    assert not np.array_equal(_read(one.files["train"][0])["kspace"],
                              _read(other.files["train"][0])["kspace"])
    # volume_seed reproduces a file's volume in memory.
    vol = S.make_volume("brain", size=SIZE, num_slices=2, seed=S.volume_seed(5, "train", 1))
    data = _read(one.files["train"][1])
    np.testing.assert_array_equal(vol.kspace, data["kspace"])
    np.testing.assert_array_equal(vol.target, data["reconstruction_esc"])


# --------------------------------------------------------------------------------------------
# Pinned output: the same arguments and seed give the same data (GENERATOR_VERSION 1)


def _feed(h, name: str, value) -> None:
    a = np.asarray(value)
    h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())


def _digest(groups) -> str:
    """sha256 over ``(label, [(name, value), ...])`` groups, in their order."""
    h = hashlib.sha256()
    for label, items in groups:
        h.update(label.encode())
        for name, value in items:
            _feed(h, name, value)
    return h.hexdigest()


def _files(root: Path):
    """``(relative path, [(key or "attr:key", value), ...])`` of every file, sorted.

    Every dataset and attribute, not the .h5 bytes (they carry timestamps). The header enters
    as the integer fields fastmri's ``SliceDataset`` reads from it (``HEADER_FIELDS``), not as
    its XML text, so that the other fields can be dropped or reworded without changing the data.
    """
    for path in sorted(root.rglob("*.h5")):
        with h5py.File(path, "r") as hf:
            items = []
            for key in sorted(hf):
                value = hf[key][()]
                if key == "ismrmrd_header":
                    header = etree.fromstring(value)
                    value = [int(et_query(header, f)) for f in HEADER_FIELDS]
                items.append((key, value))
            items += [(f"attr:{key}", hf.attrs[key]) for key in sorted(hf.attrs)]
        yield path.relative_to(root).as_posix(), items


def _rounding_proof_summary(groups):
    """The digest of everything but floating-point values, and float64 sums of those values.

    numpy's vectorised float maths may round the last bit differently on another CPU family
    or numpy release; where the exact digest then differs, the data must still agree up to
    that rounding: same integers, masks, shapes and dtypes, the same sums to 1e-5.
    """
    h, sums = hashlib.sha256(), {}
    for label, items in groups:
        h.update(label.encode())
        for name, value in items:
            a = np.asarray(value)
            if a.dtype.kind in "fc":  # summed over files
                h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
                x = np.abs(a.astype(np.complex128))
                sums[name] = sums.get(name, 0.0) + np.array([x.sum(), (x * x).sum()])
            else:
                _feed(h, name, a)
    return h.hexdigest(), np.concatenate([sums[k] for k in sorted(sums)])


def _assert_pinned(groups, digest: str, rounding_proof) -> None:
    """Exact where this CPU and numpy round as the recording did, else up to the last bit."""
    groups = list(groups)
    if _digest(groups) == digest:
        return
    other_digest, sums = _rounding_proof_summary(groups)
    assert other_digest == rounding_proof[0], "integers, masks, shapes or dtypes changed"
    np.testing.assert_allclose(sums, rounding_proof[1], rtol=1e-5)


# (make_dataset arguments, acquisitions written, sha256 of the files). Together they cover
# both knee contrasts, brain, multicoil with fewer coils than a full array (a subset), one
# ring and two rings of coils, one slice, and textures finer than the pixels (brain, 224).
PINNED = [
    (dict(anatomy="knee", challenge="singlecoil", size=32, num_slices=3, seed=0),
     {"CORPD_FBK": 2, "CORPDFS_FBK": 3},
     "1dbe68d3da58881cf38710d4f705c42a96b8afabc4bda3b966c5d1ab20402fff",
     ("35339b16f14df5e6f5d51bcccc175b160c8a5639a8fe299ab9c7c3d6e5830ac1",
      [0.00152088003, 6.53599933e-07, 0.0201509419, 0.000120883442,
       0.34822669, 7.85313344e-05, 0.746656882, 0.000120883442])),
    (dict(anatomy="knee", challenge="singlecoil", size=80, num_slices=2, seed=1),
     {"CORPD_FBK": 3, "CORPDFS_FBK": 2},
     "18d2efd2b5652c12fa4eee933b6bada9a405f3349a4e208f718fe91e65435d94",
     ("829536c0b3ac64782cfff57e58eaea07afbf30ac2e864f08a15e14762331a4c7",
      [0.00164936516, 7.13965839e-07, 0.042690248, 0.000503086332,
       1.25308784, 0.000521014218, 2.6779517, 0.000503086332])),
    (dict(anatomy="brain", challenge="singlecoil", size=32, num_slices=1, seed=0),
     {"AXT1": 5}, "b128f3899d9afc3150785f5c294db2e2f015386f610f63d747dc4aa75b8c60ec",
     ("d9b89d67a7948ec124f9a8652f0648dc092f6908d3365b40c3f853c9106a78e6",
      [0.00265869129, 1.60761349e-06, 0.016691192, 5.97628268e-05,
       0.164404607, 4.84978529e-05, 0.276613378, 5.97628268e-05])),
    (dict(anatomy="knee", challenge="multicoil", size=32, num_slices=2, num_coils=3, seed=0),
     {"CORPD_FBK": 2, "CORPDFS_FBK": 3},
     "b0e284a6548603ae6a8541c89ebc8ed70458d3637c4d9b24600658790cf37885",
     ("665f12327a305d3fd59bfb9ed47b8289f5b6dd051609b0f654ed1df5c81dd094",
      [0.00188341118, 9.8880266e-07, 0.0205255446, 0.000131990637,
       0.588278837, 0.000108912307, 0.583982833, 0.000131990637])),
    (dict(anatomy="knee", challenge="multicoil", size=32, num_slices=2, num_coils=9, seed=0),
     {"CORPD_FBK": 2, "CORPDFS_FBK": 3},
     "6fabe86fae947c362ed7d00bc9baa19fe331ffa6f7040900ae88ec9cdf9270b6",
     ("1825a5e9375f8ba000829b71a56daa9ea820d0cfca80d92af9a1c8975547fa52",
      [0.00159745104, 7.04613398e-07, 0.023667511, 0.000159892511,
       1.71689777, 0.000155882891, 0.786600174, 0.000159892511])),
    (dict(anatomy="brain", challenge="multicoil", size=32, num_slices=3, seed=0),
     {"AXT1": 5}, "40da91cd3ac8f5341ebe57ecce709571c96b0bc3115bd4405a47dbb6d7e9fa25",
     ("dea6e06f55aba91e63a630fd135fee10356da69eb97458c78cc1eabb862f5a4b",
      [0.00294238841, 1.88912579e-06, 0.0345419727, 0.000253956458,
       2.11764902, 0.000148773335, 1.22001273, 0.000253956458])),
]


@pytest.mark.parametrize("kwargs,acquisitions,digest,rounding_proof", PINNED,
                         ids=[f"{k['anatomy']}-{k['challenge']}-{k['size']}-{k['num_slices']}sl"
                              f"-{k.get('num_coils', 1)}c" for k, *_ in PINNED])
def test_output_is_pinned(tmp_path, kwargs, acquisitions, digest, rounding_proof):
    """Same arguments and seed, same data: bump GENERATOR_VERSION when a digest changes.

    The digests were recorded with one numpy build on x86-64; elsewhere the data must agree
    with them up to the last bit's rounding (``_rounding_proof_summary``).
    """
    summary = S.make_dataset(tmp_path, splits={"train": 2, "val": 1, "test": 2},
                             progress=False, **kwargs)
    assert summary.acquisitions == acquisitions
    _assert_pinned(_files(tmp_path), digest, rounding_proof)


def test_output_is_pinned_fine_textures(tmp_path):
    summary = S.make_dataset(tmp_path, anatomy="brain", size=224, num_slices=2, seed=2,
                             splits={"train": 1, "test": 1}, progress=False)
    assert summary.acquisitions == {"AXT1": 2}
    _assert_pinned(_files(tmp_path),
                   "7b11daed2cbc07576f56bca436ac5d19d6f5b4e96132fe9e9dd1785dea00f4f1",
                   ("e72130128b512e4d83ffdbfa89725d4ae595a04ad9e160451c2463f2e4cf8a7f",
                    [0.00105843897, 5.62964933e-07, 0.046233782, 0.00107827432,
                     2.79057988, 0.00100878772, 6.69695621, 0.00107827432]))


# (make_volume arguments, sha256 of its arrays and scalars, rounding proof as in PINNED)
PINNED_VOLUMES = [
    ("knee", "multicoil", 3, "4126d81ee7de63aa7b776885ba9cc388372adde5ad2a36c3a678389a06093ba6",
     ("6b2b4bad156bc8acdab13aff569f00d35a3cdd330b36a3f879f1862b2758deb2",
      [0.0742997413, 7.6240091e-06, 0.156415646, 9.2335509e-06,
       48.9374472, 1327.37737, 0.0888808472, 8.03987885e-06])),
    ("brain", "singlecoil", None,
     "996c2b89b493fa75dd7a652197ccd234b5ec06fd433b29cfa0e40c716cf39d46",
     ("2c1cf3eef3464b046cfe7327a8173e4f29da645365bc0e451a7a70b7eb818420",
      [0.0714390463, 1.44078053e-05, 0.0817127599, 1.45008013e-05,
       74.0928105, 2795.80436, 0.0791640494, 1.45007990e-05])),
    ("knee", "singlecoil", None,
     "8631caea54bbdb27f11427c98955a52e1d94272fa5e3e4d2458e9d9633ec6ed5",
     ("7e783f7f36a4deacb33f5242f41b28dc7ff025395cbe0cb12d43f872ffc164c1",
      [0.0490962594, 3.34962512e-06, 0.0523513309, 4.374648e-06,
       48.9374448, 1327.37737, 0.0530743083, 3.41345052e-06])),
]


@pytest.mark.parametrize("anatomy,challenge,coils,digest,rounding_proof", PINNED_VOLUMES)
def test_make_volume_is_pinned(anatomy, challenge, coils, digest, rounding_proof):
    """The in-memory extras (noise-free target, noise level, SNR) are pinned too, compared as
    ``test_output_is_pinned`` compares files (exact, or up to last-bit rounding)."""
    vol = S.make_volume(anatomy, challenge=challenge, size=32, num_slices=2, num_coils=coils,
                        seed=(4, 1))
    items = [(name, getattr(vol, name)) for name in ("kspace", "target", "clean_target")]
    items.append(("scalars", [vol.noise_std, vol.snr, *vol.padding]))
    _assert_pinned([("", items)], digest, rounding_proof)


# --------------------------------------------------------------------------------------------
# Command line, bad input, overwriting, interruption


def test_cli_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "data"
    rc = main(["make-data", str(out), "--size", "32", "--slices", "2", "--train-volumes", "1",
               "--val-volumes", "1", "--test-volumes", "1", "--accelerations", "4",
               "--challenge", "multicoil", "--coils", "2", "--anatomy", "brain"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "multicoil_train/" in printed and "(2, 2, 32, 32)" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "multicoil_test", "multicoil_test_gt", "multicoil_train", "multicoil_val"]
    with h5py.File(next((out / "multicoil_test").iterdir()), "r") as hf:
        assert int(hf.attrs["acceleration"]) == 4


BAD_ARGS = [
    ["--size", "0"],
    ["--size", "-32"],
    ["--size", "33"],
    ["--size", "100000"],
    ["--slices", "0"],
    ["--slices", "-1"],
    ["--train-volumes", "-1"],
    ["--train-volumes", "0", "--val-volumes", "0", "--test-volumes", "0"],
    ["--accelerations", "0"],
    ["--accelerations", "1"],
    ["--accelerations", "4", "64"],
    ["--size", "16", "--accelerations", "16"],
    ["--coils", "4"],  # singlecoil
    ["--challenge", "multicoil", "--coils", "0"],
    ["--challenge", "multicoil", "--coils", "1000"],
    ["--seed", "-1"],
    ["--size", "1024", "--slices", "512", "--train-volumes", "100000"],  # no disk that big
]


def test_make_data_takes_the_accelerations_the_other_commands_take(tmp_path):
    """One limit, ``fastmri_layout.MAX_ACCELERATION`` (64; make-data had its own 32): a test
    volume wide enough for a centre line at 64x is masked at 64x, 65x is refused."""
    summary = S.make_dataset(tmp_path / "data", size=96, num_slices=1, splits={"test": 1},
                             accelerations=[64], progress=False)
    with h5py.File(summary.files["test"][0], "r") as hf:
        assert int(hf.attrs["acceleration"]) == 64
        mask = hf["mask"][()]
    # RandomMaskFunc keeps the centre lines (0.32 / 64 of the columns) and 1/64 in all.
    assert 1 <= mask.sum() <= 2 + len(mask) // 32
    with pytest.raises(UserError, match="between 2 and 64, not 65"):
        S.make_dataset(tmp_path / "other", size=96, num_slices=1, splits={"test": 1},
                       accelerations=[65], progress=False)


@pytest.mark.reliability
@pytest.mark.parametrize("extra", BAD_ARGS, ids=[" ".join(a) for a in BAD_ARGS])
def test_cli_rejects_bad_input_before_writing(tmp_path, capsys, extra):
    out = tmp_path / "data"
    rc = main(["make-data", str(out), "--size", "32", "--slices", "2", "--quiet", *extra])
    assert rc == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "error:" in err
    assert not out.exists()  # nothing written, not even the folder


@pytest.mark.reliability
def test_cli_rejects_unusable_output_paths(tmp_path, capsys):
    afile = tmp_path / "a_file"
    afile.write_text("x")
    for out in (afile, afile / "below"):
        rc = main(["make-data", str(out), "--size", "32", "--quiet"])
        assert rc == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert afile.read_text() == "x"


@pytest.mark.reliability
def test_non_empty_folder_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "data"
    (out / "singlecoil_train").mkdir(parents=True)
    (out / "singlecoil_train" / "old.h5").write_text("old")
    (out / "notes.txt").write_text("mine")
    (out / "singlecoil_challenge").mkdir()
    args = ["make-data", str(out), "--size", "32", "--slices", "1", "--train-volumes", "1",
            "--val-volumes", "0", "--test-volumes", "1", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err
    assert (out / "singlecoil_train" / "old.h5").exists()
    assert main(args + ["--overwrite"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["notes.txt", "singlecoil_challenge", "singlecoil_test",
                     "singlecoil_test_gt", "singlecoil_train"]
    assert [p.name for p in (out / "singlecoil_train").iterdir()] == ["file_knee_train_0000.h5"]
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.reliability
@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()],
                         ids=["error", "ctrl-c"])
def test_failure_leaves_nothing_half_written(tmp_path, monkeypatch, exc):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    calls = []
    real = S.write_raw_volume

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(S, "write_raw_volume", failing)
    with pytest.raises(type(exc)):
        S.make_dataset(out, size=32, num_slices=1, splits={"train": 3}, overwrite=True,
                       progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # Through the CLI: Ctrl-C gives exit code 130, an error gives its traceback (a bug).
    if isinstance(exc, KeyboardInterrupt):
        calls.clear()
        fresh = tmp_path / "fresh"
        assert main(["make-data", str(fresh), "--size", "32", "--slices", "1", "--quiet"]) == 130
        assert not fresh.exists()


def test_library_validation_raises_user_error(tmp_path):
    with pytest.raises(UserError):
        S.make_volume("elbow")
    with pytest.raises(UserError):
        S.make_volume("knee", size=31)
    with pytest.raises(UserError):
        S.make_dataset(tmp_path / "x", splits={"training": 1})
    with pytest.raises(UserError):
        S.make_volume("brain", acquisition="CORPD_FBK")
    assert not (tmp_path / "x").exists()

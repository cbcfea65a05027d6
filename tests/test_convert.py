"""``clgnet-fastmri convert``: CC-359 raw k-space and NIfTI volumes into the fastMRI layout.

Round trips are checked against independent references: numpy's FFT of the source k-space
(CC-359), the source image sliced with numpy (NIfTI), and fastmri's own ``SliceDataset``,
``UnetDataTransform`` and ``ifft2c`` reading what was written.
"""

from __future__ import annotations

import errno
import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import fastmri
import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from fastmri.data import SliceDataset
from fastmri.data.subsample import RandomMaskFunc
from fastmri.data.transforms import UnetDataTransform, center_crop

from clgnet_fastmri import cli
from clgnet_fastmri import files as files_module
from clgnet_fastmri.data import convert as convert_module
from clgnet_fastmri.data.checks import check_volume
from clgnet_fastmri.data.formats import Converted, Format
from clgnet_fastmri.errors import UserError

SPLITS = ("train", "val", "test")
# Multi-channel test volumes have a few slices: keep them all (the default drops 50 per end).
MULTI = ("--format", "cc359-raw", "--drop-end-slices", "0")


# ---------------------------------------------------------------------------------------------
# Source files written by the tests


def write_cc359(path: Path, kspace: np.ndarray) -> None:
    """Complex ``(slices, rows, cols, coils)`` k-space in CC-359's raw layout (.h5 or .npy)."""
    raw = np.empty(kspace.shape[:3] + (2 * kspace.shape[3],), dtype=np.float32)
    raw[..., 0::2] = kspace.real
    raw[..., 1::2] = kspace.imag
    if path.suffix == ".npy":
        np.save(path, raw)
    else:
        with h5py.File(path, "w") as hf:
            hf.create_dataset("kspace", data=raw)


def coil_images(rng: np.random.Generator, slices=3, rows=16, cols=20,
                coils=3) -> np.ndarray:
    """Known coil images ``(slices, coils, rows, cols)``: a textured disc times smooth,
    complex coil maps (one coil: a smooth phase only)."""
    y, x = np.meshgrid(np.linspace(-1, 1, rows), np.linspace(-1, 1, cols), indexing="ij")
    head = (x * x + y * y < 0.7).astype(np.float64)
    images = np.empty((slices, coils, rows, cols), dtype=np.complex128)
    for c in range(coils):
        sens = np.exp(-((x - np.cos(c)) ** 2 + (y - np.sin(c)) ** 2)) if coils > 1 else 1.0
        for s in range(slices):
            images[s, c] = head * sens * np.exp(1j * (c + x)) * rng.uniform(0.5, 1.5,
                                                                            (rows, cols))
    return images


def release_kspace(images: np.ndarray, centred: bool, partial: bool = True) -> np.ndarray:
    """k-space ``(slices, rows, cols, coils)`` of coil images as the CC-359 releases store it.

    12-channel .h5 (as the MC-MRI-Rec and DIRECT CC-359 loaders read it): centred in ky/kz,
    DC at (rows // 2, cols // 2), so that their masks (centre-dense, applied without a shift)
    sample the low frequencies; the reference image is ``np.fft.ifft2`` of it without shift;
    zero from 85 % of kz on (partial Fourier, high kz). Single-channel .npy: uncentred, DC at
    index 0, reference ``np.fft.ifft2``. ``partial`` zeroes the same high-kz band in both.
    """
    kspace = np.fft.fft2(images, axes=(-2, -1))
    cols = kspace.shape[-1]
    band = np.zeros(cols, dtype=bool)
    band[int(np.ceil(0.85 * cols)):] = partial  # in the centred layout
    if centred:
        kspace = np.fft.fftshift(kspace, axes=(-2, -1))
    else:
        band = np.fft.ifftshift(band)
    kspace[..., band] = 0
    return kspace.transpose(0, 2, 3, 1).astype(np.complex64)


def cc359_kspace(rng: np.random.Generator, slices=3, rows=16, cols=20, coils=3) -> np.ndarray:
    """A source in its release's layout: centred for several coils, uncentred for one."""
    return release_kspace(coil_images(rng, slices, rows, cols, coils), centred=coils > 1)


def source_coil_images(kspace: np.ndarray, centred: bool = True) -> np.ndarray:
    """The coil images of release k-space (orthonormal scale), ``(slices, coils, rows, cols)``:
    ``np.fft.ifft2`` of the uncentred k-space."""
    if centred:
        kspace = np.fft.ifftshift(kspace, axes=(1, 2))
    return np.fft.ifft2(kspace.astype(np.complex128), axes=(1, 2), norm="ortho").transpose(
        0, 3, 1, 2)


def nifti_volume(rng: np.random.Generator, shape=(20, 24, 7)) -> np.ndarray:
    """A head-like magnitude volume whose first and last axial slices are empty."""
    vol = np.zeros(shape, dtype=np.float32)
    vol[3:17, 2:22, 1:-1] = rng.uniform(100, 900, (14, 20, shape[2] - 2))
    return vol


def write_nifti(path: Path, data: np.ndarray, affine=None) -> None:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)


def patch_header(path: Path, **fields) -> None:
    """Overwrite NIfTI-1 header fields of an uncompressed ``.nii`` in place (what a damaged
    or hostile header holds; nibabel refuses to build most of them)."""
    header = nib.load(path).header
    raw = np.frombuffer(bytearray(header.binaryblock), dtype=header.structarr.dtype).copy()
    for name, value in fields.items():
        raw[name] = value
    path.write_bytes(raw.tobytes() + path.read_bytes()[348:])


def convert(*args) -> int:
    return cli.main(["convert", "--quiet", *map(str, args)])


def read(path: Path) -> Dict[str, np.ndarray]:
    with h5py.File(path, "r") as hf:
        out = {k: hf[k][()] for k in hf}
        out["attrs"] = dict(hf.attrs)
    return out


def files(root: Path, folder: str) -> List[Path]:
    return sorted((root / folder).glob("*.h5"))


def image_of(kspace: np.ndarray) -> np.ndarray:
    """fastmri's ``ifft2c`` of complex k-space, as complex numpy."""
    return torch.view_as_complex(fastmri.ifft2c(torch.view_as_real(torch.from_numpy(
        np.ascontiguousarray(kspace))))).numpy()


@pytest.fixture(scope="module")
def cc359_source(tmp_path_factory):
    """Five 3-coil CC-359 volumes (.h5 and .npy) and their k-space."""
    root = tmp_path_factory.mktemp("cc359")
    rng = np.random.default_rng(0)
    kspaces = {}
    for i in range(5):
        name = f"e{i:02d}_P{i}"
        kspaces[name] = cc359_kspace(rng)
        write_cc359(root / (name + (".npy" if i % 2 else ".h5")), kspaces[name])
    return root, kspaces


@pytest.fixture(scope="module")
def nifti_source(tmp_path_factory):
    """Six volumes of three subjects (two sessions each), 20 x 24 x 7 voxels."""
    root = tmp_path_factory.mktemp("nifti")
    rng = np.random.default_rng(1)
    volumes = {}
    for sub in range(3):
        for ses in range(2):
            name = f"sub{sub}_ses{ses}_T1w"
            volumes[name] = nifti_volume(rng)
            write_nifti(root / f"{name}.nii.gz", volumes[name])
    return root, volumes


def axial(volume: np.ndarray) -> np.ndarray:
    """Axial slices of a RAS volume as radiologists view them (anterior up, patient's right
    on the left): ``(slices, A, R)``, both in-plane axes reversed."""
    return volume[::-1, ::-1, :].transpose(2, 1, 0)


def crop_or_pad(slices: np.ndarray, size: int) -> np.ndarray:
    """fastmri's ``center_crop`` for a larger side, centred zero padding for a smaller one."""
    rows, cols = slices.shape[1:]
    slices = center_crop(slices, (min(rows, size), min(cols, size)))
    pad = [(0, 0)] + [((size - n) // 2, size - n - (size - n) // 2) for n in slices.shape[1:]]
    return np.pad(slices, pad)


# ---------------------------------------------------------------------------------------------
# CC-359 raw k-space


def test_cc359_multicoil_round_trip(cc359_source, tmp_path):
    src, kspaces = cc359_source
    out = tmp_path / "out"
    assert convert(src, out, *MULTI, "--split", "3", "1", "1") == 0
    written = {p.stem: p for s in ("train", "val") for p in files(out, f"multicoil_{s}")}
    assert len(written) == 4
    for name, path in written.items():
        data = read(path)
        images = source_coil_images(kspaces[name])
        # The k-space is the source's, moved to fastMRI's centred convention: fastmri's
        # ifft2c of it gives the source's coil images, and the target is their RSS.
        assert data["kspace"].shape == images.shape and data["kspace"].dtype == np.complex64
        scale = np.abs(images).max()
        np.testing.assert_allclose(image_of(data["kspace"]), images, atol=2e-6 * scale)
        rss = np.sqrt((np.abs(images) ** 2).sum(axis=1))
        np.testing.assert_allclose(data["reconstruction_rss"], rss, rtol=1e-5,
                                   atol=2e-6 * scale)
        # Faithful: the same samples, shifted and sign-flipped (nothing interpolated).
        np.testing.assert_array_equal(np.sort(np.abs(data["kspace"]).ravel()),
                                      np.sort(np.abs(kspaces[name]).ravel()))
        attrs = data["attrs"]
        assert attrs["acquisition"] == "AXT1" and attrs["patient_id"] == name
        assert attrs["max"] == pytest.approx(data["reconstruction_rss"].max())
        assert attrs["norm"] == pytest.approx(np.linalg.norm(
            data["reconstruction_rss"].astype(np.float64)))
        assert check_volume(path, "multicoil", need_target=True) == 3


def test_cc359_singlecoil_is_the_first_svd_virtual_coil(cc359_source, tmp_path):
    src, kspaces = cc359_source
    out = tmp_path / "out"
    assert convert(src, out, *MULTI, "--singlecoil", "--split", "5", "0",
                   "0") == 0
    paths = files(out, "singlecoil_train")
    assert len(paths) == 5 and not (out / "singlecoil_val").exists()
    for path in paths:
        data = read(path)
        images = source_coil_images(kspaces[path.stem])  # (slices, coils, rows, cols)
        coils = images.shape[1]
        # numpy's SVD of all coil samples (an independent route to the same compression)
        u = np.linalg.svd(images.transpose(1, 0, 2, 3).reshape(coils, -1),
                          full_matrices=False)[0][:, 0]
        virtual = np.tensordot(u.conj(), images, axes=([0], [1]))
        scale = np.abs(virtual).max()
        np.testing.assert_allclose(data["reconstruction_esc"], np.abs(virtual), rtol=1e-5,
                                   atol=2e-6 * scale)
        # The written k-space is that coil's (its phase kept), up to a global phase.
        image = image_of(data["kspace"])
        ratio = np.vdot(virtual, image) / np.vdot(virtual, virtual)
        assert abs(abs(ratio) - 1) < 1e-5
        np.testing.assert_allclose(image, ratio * virtual, atol=2e-6 * scale)
        assert check_volume(path, "singlecoil", need_target=True) == 3


def test_cc359_single_channel_release_is_singlecoil_and_exact(tmp_path):
    """One-coil sources (the single-channel release) become singlecoil files of the same
    samples."""
    src = tmp_path / "src"
    src.mkdir()
    kspace = cc359_kspace(np.random.default_rng(2), coils=1)
    write_cc359(src / "vol.npy", kspace)
    assert convert(src, tmp_path / "out", "--format", "cc359-raw", "--split", "1", "0",
                   "0") == 0
    data = read(tmp_path / "out" / "singlecoil_train" / "vol.h5")
    rows, cols = kspace.shape[1:3]
    sign = (-1.0) ** (np.arange(rows)[:, None] + np.arange(cols)[None, :])
    expected = np.fft.fftshift(kspace[..., 0] * sign, axes=(-2, -1))
    np.testing.assert_array_equal(data["kspace"], expected.astype(np.complex64))
    reference = np.abs(np.fft.ifft2(kspace[..., 0].astype(np.complex128), norm="ortho"))
    np.testing.assert_allclose(data["reconstruction_esc"], reference, rtol=1e-5,
                               atol=1e-6 * reference.max())


def zero_filled_nmse(kspace: np.ndarray, mask_func) -> float:
    """NMSE of fastmri's zero-filled RSS image against the fully sampled one."""
    k = torch.view_as_real(torch.from_numpy(kspace))
    mask, _ = mask_func((1,) * (k.ndim - 3) + (k.shape[-2], 1), seed=0)
    full = fastmri.rss(fastmri.complex_abs(fastmri.ifft2c(k)), dim=1)
    zero_filled = fastmri.rss(fastmri.complex_abs(fastmri.ifft2c(k * mask)), dim=1)
    return float(((full - zero_filled) ** 2).sum() / (full ** 2).sum())


@pytest.mark.parametrize("release", ["12-channel.h5", "single-channel.npy"])
def test_cc359_releases_as_stored_give_the_known_image(tmp_path, release):
    """Each release's own layout (centred 12-channel .h5, uncentred single-channel .npy) with
    coil maps and partial Fourier, built from known coil images."""
    coils, suffix = (4, ".h5") if release.endswith(".h5") else (1, ".npy")
    centred = coils > 1
    images = coil_images(np.random.default_rng(7), slices=3, rows=32, cols=40, coils=coils)
    src = tmp_path / "src"
    src.mkdir()
    write_cc359(src / f"full{suffix}", release_kspace(images, centred, partial=False))
    stored = release_kspace(images, centred)
    write_cc359(src / f"pf{suffix}", stored)
    out = tmp_path / "out"
    assert convert(src, out, *MULTI, "--split", "2", "0", "0") == 0
    challenge = "multicoil" if coils > 1 else "singlecoil"
    full, pf = (read(out / f"{challenge}_train" / f"{name}.h5") for name in ("full", "pf"))
    kspace = full["kspace"].reshape(3, coils, 32, 40)
    # fastmri's ifft2c of the written k-space is the known image (orthonormal scale) ...
    image = image_of(kspace)
    np.testing.assert_allclose(image, images * np.sqrt(32 * 40),
                               atol=1e-4 * np.abs(image).max())
    # ... and the target is fastmri's rss of it.
    rss = fastmri.rss(fastmri.complex_abs(torch.view_as_real(torch.from_numpy(image))),
                      dim=1)
    key = "reconstruction_rss" if coils > 1 else "reconstruction_esc"
    np.testing.assert_allclose(full[key], rss.numpy(), rtol=1e-5, atol=1e-5 * rss.max())
    # With partial Fourier: the release's reference image (np.fft.ifft2 without shift, for
    # the centred release only a sign checkerboard) in magnitude; the band at high kz.
    reference = np.abs(np.fft.ifft2(stored.astype(np.complex128), axes=(1, 2),
                                    norm="ortho"))
    np.testing.assert_allclose(np.abs(image_of(pf["kspace"].reshape(3, coils, 32, 40))),
                               reference.transpose(0, 3, 1, 2), atol=1e-5 * reference.max())
    assert not pf["kspace"][..., 34:].any() and pf["kspace"][..., 33].any()
    # The header's encoding centre is the written DC column, and fastmri's masks keep it.
    energy = (np.abs(kspace) ** 2).sum(axis=tuple(range(kspace.ndim - 1)))
    header = full["ismrmrd_header"].decode()
    assert int(energy.argmax()) == 20 and "<center>20</center>" in header
    assert energy[17:23].sum() > 0.5 * energy.sum()  # RandomMaskFunc's 4x centre: 0.08 x 40
    # 4x RandomMaskFunc: zero-filled NMSE 0.11-0.13 here; ~0.8 with DC in the corners (the
    # uncentred premise applied to the centred release).
    mask_func = RandomMaskFunc([0.08], [4])
    assert zero_filled_nmse(kspace, mask_func) < 0.2
    corners = np.ascontiguousarray(np.fft.fftshift(kspace, axes=(-2, -1)))
    assert zero_filled_nmse(corners, mask_func) > 0.5


def test_cc359_centring_is_found_and_contradictions_refused(tmp_path, capsys):
    images = coil_images(np.random.default_rng(8), slices=3, coils=1)
    src = tmp_path / "src"
    src.mkdir()
    centred_npy = src / "centred.npy"  # single-channel data, centred unlike its release
    write_cc359(centred_npy, release_kspace(images, centred=True, partial=False))
    out = tmp_path / "out"
    _fails(capsys, out, src, out, "--format", "cc359-raw", expect=f"{centred_npy}: its k-space "
           "energy peaks at the array centre, i.e. centred, but its release (.npy, "
           "single-channel) stores it uncentred (check the file; pass --centred")
    _fails(capsys, out, src, out, "--format", "cc359-raw", "--uncentred",
           expect="i.e. centred, but --uncentred uncentred")
    assert convert(src, out, "--format", "cc359-raw", "--centred", "--split", "1", "0",
                   "0") == 0
    written = read(out / "singlecoil_train" / "centred.h5")
    np.testing.assert_allclose(image_of(written["kspace"]), images[:, 0] * np.sqrt(16 * 20),
                               atol=1e-4 * np.abs(images).max() * np.sqrt(16 * 20))
    # 12-channel .h5 stored uncentred: refused the same way.
    h5 = tmp_path / "h5"
    h5.mkdir()
    write_cc359(h5 / "v.h5", release_kspace(coil_images(np.random.default_rng(9)),
                                            centred=False))
    _fails(capsys, tmp_path / "o2", h5, tmp_path / "o2", *MULTI,
           expect="array corners (index 0), i.e. uncentred, but its release (.h5, "
                  "multi-channel) stores it centred")
    # Noise has no energy peak; a 3-coil .npy is no release: the user must say.
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(10)
    write_cc359(noise / "n.npy", (rng.normal(size=(3, 16, 20, 3))
                                  + 1j * rng.normal(size=(3, 16, 20, 3))).astype(np.complex64))
    _fails(capsys, tmp_path / "o3", noise, tmp_path / "o3", *MULTI,
           expect="cannot tell whether its k-space is centred")
    assert convert(noise, tmp_path / "o3", *MULTI, "--uncentred", "--split", "1", "0",
                   "0") == 0


def test_cc359_drop_end_slices(tmp_path, capsys):
    """Multi-channel volumes lose DIRECT's 50 outer slices per end by default; single-channel
    ones keep all."""
    rng = np.random.default_rng(11)
    multi, single = tmp_path / "multi", tmp_path / "single"
    multi.mkdir()
    single.mkdir()
    images = coil_images(rng, slices=103, rows=8, cols=8, coils=2)
    write_cc359(multi / "m.h5", release_kspace(images, centred=True, partial=False))
    write_cc359(single / "s.npy", cc359_kspace(rng, slices=5, coils=1))
    args = ("--format", "cc359-raw", "--split", "1", "0", "0")
    assert convert(multi, tmp_path / "om", *args) == 0
    data = read(tmp_path / "om" / "multicoil_train" / "m.h5")
    np.testing.assert_allclose(image_of(data["kspace"]), images[50:53] * 8,
                               atol=1e-4 * np.abs(images).max() * 8)
    assert "<maximum>2</maximum><center>0</center></slice>" in data["ismrmrd_header"].decode()
    assert convert(single, tmp_path / "os", *args) == 0
    assert read(tmp_path / "os" / "singlecoil_train" / "s.h5")["kspace"].shape[0] == 5
    _fails(capsys, tmp_path / "o2", single, tmp_path / "o2", *args, "--drop-end-slices", 3,
           expect="has 5 slices, none left after dropping 3 at each end")


# ---------------------------------------------------------------------------------------------
# NIfTI


@pytest.mark.parametrize("size", [16, 32])  # crop (20 x 24 in-plane) and pad
def test_nifti_round_trip_crop_pad_and_empty_slices(nifti_source, tmp_path, size):
    src, volumes = nifti_source
    out = tmp_path / "out"
    assert convert(src, out, "--format", "nifti", "--size", size, "--split", "6", "0",
                   "0") == 0
    for path in files(out, "singlecoil_train"):
        data = read(path)
        expected = crop_or_pad(axial(volumes[path.stem]), size)[1:-1]  # empty ends dropped
        np.testing.assert_array_equal(data["reconstruction_esc"], expected)
        kspace = data["kspace"]
        assert kspace.shape == expected.shape and kspace.dtype == np.complex64
        image = image_of(kspace)
        np.testing.assert_allclose(np.abs(image), expected, atol=1e-4 * expected.max())
        assert check_volume(path, "singlecoil", need_target=True) == expected.shape[0]
    assert convert(src, out, "--format", "nifti", "--size", size, "--split", "6", "0", "0",
                   "--keep-empty", "--overwrite") == 0
    kept = read(out / "singlecoil_train" / "sub0_ses0_T1w.h5")["reconstruction_esc"]
    assert len(kept) == 7 and not kept[0].any() and not kept[-1].any()


def test_nifti_orientation_follows_the_affine(tmp_path):
    """A volume stored left-right flipped with a matching affine gives the same slices."""
    vol = nifti_volume(np.random.default_rng(3))
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = vol.shape[0] - 1
    for name, data, affine in (("ras", vol, None), ("las", vol[::-1].copy(), flip)):
        (tmp_path / name).mkdir()
        write_nifti(tmp_path / name / "v.nii", data, affine)
        assert convert(tmp_path / name, tmp_path / f"out_{name}", "--format", "nifti",
                       "--size", 16, "--split", "1", "0", "0") == 0
    a = read(tmp_path / "out_ras" / "singlecoil_train" / "v.h5")["reconstruction_esc"]
    b = read(tmp_path / "out_las" / "singlecoil_train" / "v.h5")["reconstruction_esc"]
    np.testing.assert_array_equal(a, b)
    for axis, n in (("sagittal", 14), ("coronal", 20)):  # anatomy extent along that axis
        out = tmp_path / f"out_{axis}"
        assert convert(tmp_path / "ras", out, "--format", "nifti", "--size", 16, "--axis",
                       axis, "--split", "1", "0", "0") == 0
        assert read(out / "singlecoil_train" / "v.h5")["kspace"].shape == (n, 16, 16)


def test_nifti_phase_makes_kspace_non_hermitian(nifti_source, tmp_path):
    src, volumes = nifti_source
    out = tmp_path / "out"
    assert convert(src, out, "--format", "nifti", "--size", 16, "--phase", "--split", "6",
                   "0", "0") == 0
    data = read(out / "singlecoil_train" / "sub1_ses0_T1w.h5")
    image = image_of(data["kspace"])
    target = data["reconstruction_esc"]
    np.testing.assert_array_equal(target, crop_or_pad(axial(volumes["sub1_ses0_T1w"]), 16)[1:-1])
    np.testing.assert_allclose(np.abs(image), target, atol=1e-4 * target.max())
    assert np.abs(image.imag).max() > 0.1 * target.max()  # a real image has none


# ---------------------------------------------------------------------------------------------
# Splits, test masking, fastmri reading every split, determinism


def test_every_split_reads_with_fastmri_and_subjects_stay_together(nifti_source, tmp_path,
                                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)  # fastmri's dataset cache, if any, stays here
    src, volumes = nifti_source
    out = tmp_path / "out"
    assert convert(src, out, "--format", "nifti", "--size", 16, "--subject-pattern",
                   r"^(sub\d+)_", "--split", "1", "1", "1") == 0
    subjects = {}
    for split in SPLITS:
        for path in files(out, f"singlecoil_{split}"):
            subjects.setdefault(path.stem.split("_")[0], set()).add(split)
            assert read(path)["attrs"]["patient_id"] == path.stem.split("_")[0]
        dataset = SliceDataset(out / f"singlecoil_{split}", "singlecoil",
                               transform=UnetDataTransform("singlecoil"))
        assert len(dataset) == 2 * 5
        for sample in dataset:
            assert sample.image.shape == (16, 16) and torch.isfinite(sample.image).all()
            if split != "test":
                assert sample.target.shape == (16, 16)
    assert sorted(subjects) == ["sub0", "sub1", "sub2"]
    assert all(len(s) == 1 for s in subjects.values())  # both sessions in one split


def test_multicoil_splits_read_with_fastmri(cc359_source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src, _ = cc359_source
    out = tmp_path / "out"
    assert convert(src, out, *MULTI) == 0  # default: 25/10/10 of 45 -> 3/1/1
    counts = {s: len(files(out, f"multicoil_{s}")) for s in SPLITS}
    assert counts == {"train": 3, "val": 1, "test": 1}
    for split in SPLITS:
        dataset = SliceDataset(out / f"multicoil_{split}", "multicoil",
                               transform=UnetDataTransform("multicoil"))
        assert len(dataset) == 3 * counts[split]
        for sample in dataset:
            assert sample.image.shape == (16, 20) and torch.isfinite(sample.image).all()


def test_test_split_is_masked_like_the_challenge_with_ground_truth(cc359_source, tmp_path):
    src, kspaces = cc359_source
    out = tmp_path / "out"
    assert convert(src, out, *MULTI, "--split", "0", "0", "5",
                   "--accelerations", "4", "--center-fractions", "0.2") == 0
    assert not (out / "multicoil_train").exists()
    for path in files(out, "multicoil_test"):
        test = read(path)
        gt = read(out / "multicoil_test_gt" / path.name)
        assert "reconstruction_rss" not in test and "max" not in test["attrs"]
        mask = test["mask"]
        assert mask.dtype == bool and mask.shape == (20,)
        assert test["attrs"]["acceleration"] == 4 == gt["attrs"]["acceleration"]
        assert test["attrs"]["num_low_frequency"] == round(20 * 0.2) == mask[8:12].sum()
        images = source_coil_images(kspaces[path.stem])
        full = fastmri.fft2c(torch.view_as_real(torch.from_numpy(images))).numpy()
        full = full[..., 0] + 1j * full[..., 1]
        scale = np.abs(full).max()
        np.testing.assert_allclose(test["kspace"], full * mask, atol=1e-5 * scale)
        assert (test["kspace"][..., ~mask] == 0).all()
        rss = np.sqrt((np.abs(images) ** 2).sum(axis=1))
        np.testing.assert_allclose(gt["reconstruction_rss"], rss, rtol=1e-5, atol=1e-5)
        assert gt["attrs"]["max"] == pytest.approx(rss.max(), rel=1e-5)
        assert check_volume(path, "multicoil") == 3


def test_split_by_folder_keeps_the_release_split(tmp_path, capsys):
    src = tmp_path / "src"
    rng = np.random.default_rng(6)
    layout = {"Train": ["a", "b"], "Val": ["c"], "Test": ["d"]}
    for folder, names in layout.items():
        (src / folder).mkdir(parents=True)
        for name in names:
            write_cc359(src / folder / f"{name}.npy", cc359_kspace(rng, coils=1))
    out = tmp_path / "out"
    assert convert(src, out, "--format", "cc359-raw", "--split-by-folder", "--seed", 3) == 0
    for folder, names in layout.items():
        assert [p.stem for p in files(out, f"singlecoil_{folder.lower()}")] == names
    assert [p.stem for p in files(out, "singlecoil_test_gt")] == ["d"]
    # one subject in two folders is refused
    write_cc359(src / "Val" / "a_rescan.npy", cc359_kspace(rng, coils=1))
    _fails(capsys, tmp_path / "out2", src, tmp_path / "out2", "--format", "cc359-raw",
           "--split-by-folder", "--subject-pattern", "^([a-z])", expect="also in the")


def test_same_seed_same_files_other_seed_other_split(nifti_source, tmp_path):
    src, _ = nifti_source

    def run(seed, name):
        out = tmp_path / name
        assert convert(src, out, "--format", "nifti", "--size", 16, "--phase", "--seed",
                       seed) == 0
        return {p.relative_to(out).as_posix(): read(p) for p in sorted(out.rglob("*.h5"))}

    a, b, c = run(0, "a"), run(0, "b"), run(5, "c")
    assert a.keys() == b.keys()
    for key in a:
        for item in ("kspace", "mask"):
            if item in a[key]:
                np.testing.assert_array_equal(a[key][item], b[key][item])
    assert a.keys() != c.keys()  # another split of the subjects


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the file, exit 2, nothing written


def _good_cc359_source(tmp_path: Path, volumes: int, seed: int):
    """``(tmp_path/src, rng)``: a folder of ``volumes`` valid CC-359 files, beside which a
    test puts its bad one (``rng`` continues the stream that made them)."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(volumes):
        write_cc359(src / f"good{i}.h5", cc359_kspace(rng))
    return src, rng


def _fails(capsys, out: Path, *args, expect: str) -> str:
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    assert convert(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clgnet-fastmri convert: error: ") and "\n" not in err
    assert expect in err
    after = sorted(p.name for p in out.iterdir()) if out.exists() else None
    assert after == before  # nothing added, not even a staging folder
    return err


@pytest.mark.reliability
def test_folder_without_volumes(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("no volumes here")
    err = _fails(capsys, tmp_path / "out", tmp_path / "src", tmp_path / "out", "--format",
                 "nifti", expect=str(tmp_path / "src"))
    assert "no nifti volumes" in err


@pytest.mark.reliability
@pytest.mark.parametrize("case, expect", [
    ("truncated_h5", "not a readable HDF5 file"),
    ("foreign_h5", "not a readable HDF5 file"),
    ("odd_last_axis", "odd number"),
    ("rank3", "3 dimensions"),
    ("no_kspace", "no 'kspace' dataset"),
    ("nan", "NaN or Inf"),
    ("truncated_npy", "not a readable .npy"),
])
def test_bad_cc359_sources(tmp_path, capsys, case, expect):
    src, rng = _good_cc359_source(tmp_path, volumes=3, seed=4)
    bad = src / ("bad.npy" if case == "truncated_npy" else "bad.h5")
    if case in ("truncated_h5", "truncated_npy"):
        write_cc359(bad, cc359_kspace(rng))
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    elif case == "foreign_h5":
        bad.write_text("not hdf5")
    else:
        with h5py.File(bad, "w") as hf:
            if case == "odd_last_axis":
                hf["kspace"] = np.zeros((2, 16, 20, 5), np.float32)
            elif case == "rank3":
                hf["kspace"] = np.zeros((16, 20, 6), np.float32)
            elif case == "no_kspace":
                hf["image"] = np.zeros((2, 16, 20), np.float32)
            else:
                raw = np.ones((2, 16, 20, 6), np.float32)
                raw[1, 3, 4, 2] = np.nan
                hf["kspace"] = raw
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the user's")
    err = _fails(capsys, out, src, out, *MULTI, "--overwrite", expect=expect)
    assert str(bad) in err
    assert (out / "keep.txt").read_text() == "the user's"
    # --skip-bad-files converts the others and names the one left out
    assert convert(src, out, *MULTI, "--overwrite", "--skip-bad-files",
                   "--split", "3", "0", "0") == 0
    assert [p.name for p in files(out, "multicoil_train")] == ["good0.h5", "good1.h5",
                                                               "good2.h5"]


@pytest.mark.reliability
@pytest.mark.parametrize("case, expect", [
    ("2d", "2-D image"),
    ("4d", "4-D image"),
    ("nan", "NaN or Inf"),
    ("truncated", "cannot be read"),
    ("garbage", "not a readable NIfTI file"),
    ("negative", "is no magnitude image: its negative values hold 100 %"),
    ("complex", "holds complex voxels"),
    ("rgb", "not intensities"),
    ("nan_affine", "has no usable orientation"),
    ("zero_affine", "has no usable orientation"),
    ("overflow", "has values beyond the float32 range"),
    ("huge", "its header claims 32767 x 32767 x 32767 voxels, more than the"),
    ("short", "the file holds 1000"),
    ("zero", "holds no anatomy"),
])
def test_bad_nifti_sources(tmp_path, capsys, case, expect):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(5)
    for i in range(2):
        write_nifti(src / f"good{i}.nii.gz", nifti_volume(rng))
    bad = src / "bad.nii.gz"
    vol = nifti_volume(rng)
    if case == "2d":
        write_nifti(bad, vol[:, :, 3])
    elif case == "4d":
        write_nifti(bad, np.stack([vol, vol], axis=-1))
    elif case == "nan":
        vol[5, 5, 3] = np.nan
        write_nifti(bad, vol)
    elif case == "negative":  # e.g. a difference image
        write_nifti(bad, -vol)
    elif case == "complex":
        write_nifti(bad, vol * np.exp(0.5j))
    elif case == "rgb":
        rgb = np.zeros(vol.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        write_nifti(bad, rgb)
    elif case in ("nan_affine", "zero_affine"):
        bad = src / "bad.nii"
        write_nifti(bad, vol)
        value = np.nan if case == "nan_affine" else 0.0
        patch_header(bad, qform_code=0, sform_code=1, srow_x=[value] * 4,
                     srow_y=[value] * 4, srow_z=[value] * 4)
    elif case == "overflow":
        write_nifti(bad, vol.astype(np.float64) * 1e300)
    elif case in ("huge", "short"):
        bad = src / "bad.nii"  # uncompressed: the header's claim is checked on the file
        write_nifti(bad, vol)
        if case == "huge":  # NIfTI-1's largest dims, 3.5e13 voxels, in a 14 kB file
            patch_header(bad, dim=[3, 32767, 32767, 32767, 1, 1, 1, 1])
        else:
            bad.write_bytes(bad.read_bytes()[:1000])
    elif case == "zero":
        write_nifti(bad, np.zeros_like(vol))
    elif case == "truncated":
        write_nifti(bad, vol)
        raw = gzip.decompress(bad.read_bytes())
        bad.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    else:
        bad.write_bytes(b"\x00" * 100)
    err = _fails(capsys, tmp_path / "out", src, tmp_path / "out", "--format", "nifti",
                 "--size", 16, "--split", "3", "0", "0", expect=expect)
    assert str(bad) in err


@pytest.mark.reliability
def test_interrupted_run_leaves_the_output_as_it_was(nifti_source, tmp_path, monkeypatch):
    src, _ = nifti_source
    out = tmp_path / "out"
    assert convert(src, out, "--format", "nifti", "--size", 16) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = []
    real = convert_module.write_volume

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(convert_module, "write_volume", interrupted)
    assert convert(src, out, "--format", "nifti", "--size", 32, "--overwrite") == 130
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and not list(out.glob(".*"))
    # A killed run's staging folder is removed by the next run.
    (out / ".convert-killed.partial").mkdir()
    monkeypatch.setattr(convert_module, "write_volume", real)
    assert convert(src, out, "--format", "nifti", "--size", 16, "--overwrite") == 0
    assert not list(out.glob(".*"))


@pytest.mark.reliability
def test_bad_options_and_outputs(nifti_source, tmp_path, capsys):
    src, _ = nifti_source
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("")
    _fails(capsys, out, src, out, "--format", "nifti", expect="not empty")
    _fails(capsys, out, src, out, "--format", "nifti", "--overwrite", "--size", 15,
           expect="--size")
    _fails(capsys, out, src, out, "--format", "nifti", "--overwrite", "--size", 16,
           "--accelerations", "4", "8", "--center-fractions", "0.1",
           expect="one center fraction per acceleration")
    _fails(capsys, out, src, out, "--format", "nifti", "--overwrite", "--size", 16,
           "--accelerations", "16", "--center-fractions", "0.02", "--split", "0", "0", "1",
           expect="too few")
    _fails(capsys, out, src, out, "--format", "nifti", "--overwrite", "--subject-pattern",
           "nomatch", expect="does not match")


def test_nifti_interpolation_undershoot_is_clipped_and_counted(tmp_path, capsys):
    """Resampled brains (SPM, FSL, ANTs) have a few small negative voxels: clipped to 0."""
    vol = nifti_volume(np.random.default_rng(12))
    vol[4, 3, 2], vol[10, 20, 4], vol[15, 5, 3] = -3.0, -0.5, -1e-3
    src = tmp_path / "src"
    src.mkdir()
    write_nifti(src / "v.nii.gz", vol)
    (src / "v.json").write_text("{}")  # a BIDS sidecar: not a volume, listed as ignored
    assert cli.main(["convert", str(src), str(tmp_path / "out"), "--format", "nifti",
                     "--size", "16", "--split", "1", "0", "0"]) == 0
    summary = capsys.readouterr().out
    assert "clipped 3 negative voxels to 0 in 1 volume (interpolation undershoot): " \
           "v.nii.gz" in summary
    assert "ignored 1 file without a nifti suffix (v.json)" in summary
    target = read(tmp_path / "out" / "singlecoil_train" / "v.h5")["reconstruction_esc"]
    np.testing.assert_array_equal(target, crop_or_pad(axial(np.maximum(vol, 0)), 16)[1:-1])


@pytest.mark.reliability
def test_no_usable_output_is_an_error(nifti_source, tmp_path, capsys):
    src, _ = nifti_source
    out = tmp_path / "out"
    # 6 subjects cannot fill 1/1/1 of 6 ... but 2 subjects leave a fraction's split empty.
    few = tmp_path / "few"
    few.mkdir()
    for name in ("a", "b"):
        write_nifti(few / f"{name}.nii", nifti_volume(np.random.default_rng(13)))
    _fails(capsys, out, few, out, "--format", "nifti", "--size", 16,
           expect="its 2 usable subjects leave the test split empty")
    # Every file bad at its header, or every volume of a split bad at its values.
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("a", "b"):
        (bad / f"{name}.nii").write_bytes(b"\0" * 100)
    _fails(capsys, out, bad, out, "--format", "nifti", "--skip-bad-files",
           expect="no usable volumes (every file was left out")
    zero = tmp_path / "zero"
    shutil.copytree(src, zero)
    for name in ("sub0_ses0_T1w", "sub0_ses1_T1w"):
        write_nifti(zero / f"{name}.nii.gz", np.zeros((20, 24, 7), np.float32))
    _fails(capsys, out, zero, out, "--format", "nifti", "--size", 16, "--keep-empty",
           "--subject-pattern", r"^(sub\d+)_", "--split", "1", "1", "1", "--skip-bad-files",
           expect="split was left out (")
    assert not out.exists()


def test_split_by_folder_carves_the_test_split_from_val(tmp_path, capsys):
    """CC-359's single-channel release has Train/ and Val/ only."""
    src = tmp_path / "src"
    rng = np.random.default_rng(14)
    layout = {"Train": ["a", "b"], "Val": ["c", "d", "e", "f", "g"]}
    for folder, names in layout.items():
        (src / folder).mkdir(parents=True)
        for name in names:
            write_cc359(src / folder / f"{name}.npy", cc359_kspace(rng, coils=1))
    out = tmp_path / "out"
    assert convert(src, out, "--format", "cc359-raw", "--split-by-folder", "--seed", 1) == 0
    found = {s: [p.stem for p in files(out, f"singlecoil_{s}")] for s in SPLITS}
    assert found["train"] == ["a", "b"] and len(found["test"]) == 2 and len(found["val"]) == 3
    assert sorted(found["val"] + found["test"]) == layout["Val"]
    assert [p.stem for p in files(out, "singlecoil_test_gt")] == found["test"]
    for name in ("d", "e", "f", "g"):
        (src / "Val" / f"{name}.npy").unlink()
    _fails(capsys, tmp_path / "o2", src, tmp_path / "o2", "--format", "cc359-raw",
           "--split-by-folder", expect="has no Test folder and 1 validation subject;")


def test_convert_and_evaluate_share_the_acquisition_names(nifti_source, tmp_path, capsys):
    src, _ = nifti_source
    out = tmp_path / "out"
    assert convert(src, out, "--format", "nifti", "--size", 16, "--acquisition",
                   "AXFLAIR") == 0
    gt = out / "singlecoil_test_gt"
    assert {read(p)["attrs"]["acquisition"] for p in gt.glob("*.h5")} == {"AXFLAIR"}
    # evaluate filters on it ...
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for path in gt.glob("*.h5"):
        with h5py.File(predictions / path.name, "w") as hf:
            hf["reconstruction"] = read(path)["reconstruction_esc"] * 0.9
    scored = ["evaluate", "--target-path", str(gt), "--predictions-path", str(predictions),
              "--challenge", "singlecoil", "--output", str(tmp_path / "m.json")]
    assert cli.main([*scored, "--acquisition", "AXFLAIR"]) == 0
    assert all(p.name in capsys.readouterr().out for p in gt.glob("*.h5"))
    assert cli.main([*scored, "--acquisition", "AXT1"]) == 2
    assert "no target volume matches" in capsys.readouterr().err
    # ... and a label outside fastMRI's is refused by both.
    for argv in (["convert", str(src), str(tmp_path / "o2"), "--format", "nifti",
                  "--acquisition", "MPRAGE"],
                 ["evaluate", "--target-path", str(gt), "--predictions-path", str(gt),
                  "--acquisition", "MPRAGE"]):
        with pytest.raises(SystemExit) as exited:
            cli.main(argv)
        assert exited.value.code == 2
        assert "invalid choice: 'MPRAGE'" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


@pytest.mark.reliability
def test_every_entry_under_source_is_accounted_for(nifti_source, tmp_path, capsys,
                                                   monkeypatch):
    src = tmp_path / "src"
    shutil.copytree(nifti_source[0], src)
    locked = src / "locked"
    locked.mkdir()
    (src / "gone.nii.gz").symlink_to(tmp_path / "nowhere.nii.gz")
    (src / "loop").symlink_to(src)
    make_unreadable(monkeypatch, locked)
    out = tmp_path / "out"
    args = (src, out, "--format", "nifti", "--size", 16)
    _fails(capsys, out, *args, expect=f"{src / 'gone.nii.gz'}: dangling symbolic link")
    (src / "gone.nii.gz").unlink()
    _fails(capsys, out, *args, expect=f"{locked}: folder cannot be read (Permission denied)")
    locked.rmdir()
    _fails(capsys, out, *args, expect=f"{src / 'loop'}: symbolic link loop (leads back to")
    (src / "gone.nii.gz").symlink_to(tmp_path / "nowhere.nii.gz")
    assert cli.main(["convert", *map(str, args), "--skip-bad-files"]) == 0
    summary = capsys.readouterr().out
    assert f"left out: {src / 'gone.nii.gz'}: dangling symbolic link" in summary
    assert f"left out: {src / 'loop'}: symbolic link loop" in summary
    assert "converted 6 nifti volumes" in summary


def make_unreadable(monkeypatch, folder: Path) -> None:
    """Listing ``folder`` fails as it does without read permission (chmod does not stop
    root, whom the tests may run as)."""
    real_scandir = os.scandir

    def scandir(path="."):
        if isinstance(path, (str, Path)) and Path(path) == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.reliability
def test_bad_options_and_paths_are_one_line(nifti_source, tmp_path, capsys, monkeypatch):
    src, _ = nifti_source
    out = tmp_path / "out"
    for option, expect in ((("--split", "nan", "1", "1"), "three finite non-negative"),
                           (("--split", "inf", "1", "1"), "three finite non-negative"),
                           (("--seed", "-1"), "--seed must be 0 or more"),
                           (("--size", "100000"), "--size must be an even number from 16"),
                           (("--size", "128"), "is over 4x the volume's largest side"),
                           (("--drop-end-slices", "-2"), "--drop-end-slices must be 0")):
        _fails(capsys, out, src, out, "--format", "nifti", *option, expect=expect)
    _fails(capsys, src, src, src, "--format", "nifti", expect="OUT is SOURCE")
    inside = out / "sources"
    shutil.copytree(src, inside)
    _fails(capsys, out, inside, out, "--format", "nifti", "--overwrite",
           expect=f"{inside}: SOURCE lies inside OUT")
    assert convert(src, out / "data", "--format", "nifti", "--size", 16) == 0
    _fails(capsys, out, out / "data" / "singlecoil_train", out / "again", "--format", "nifti",
           expect="is a split folder of a fastMRI dataset")
    _fails(capsys, out, out / "data", out / "again", "--format", "cc359-raw",
           expect="is a fastMRI file (it has an 'ismrmrd_header'), not CC-359")
    _fails(capsys, out, src / "sub0_ses0_T1w.nii.gz", out / "again", "--format", "nifti",
           expect="is a file, not a folder")
    make_unreadable(monkeypatch, src)
    _fails(capsys, out, src, out / "again", "--format", "nifti",
           expect=f"{src}: source folder cannot be read (Permission denied)")


@pytest.mark.reliability
@pytest.mark.parametrize("case, expect", [
    ("npz", "is a .npz archive named .npy"),
    ("chunk", "slice 0 cannot be read (truncated or corrupt file)"),
    ("overflow", "slice 0 exceeds the float32 range once converted"),
    ("zero", "is all zero"),
    ("huge", "beyond the 512 slices"),
])
def test_bad_cc359_values_and_headers(tmp_path, capsys, case, expect):
    src, rng = _good_cc359_source(tmp_path, volumes=2, seed=15)
    bad = src / ("bad.npy" if case == "npz" else "bad.h5")
    raw = np.ascontiguousarray(np.stack([cc359_kspace(rng).real] * 2, axis=-1).reshape(
        3, 16, 20, 6)).astype(np.float64)
    if case == "npz":
        with open(bad, "wb") as f:
            np.savez(f, kspace=raw)
    elif case == "chunk":  # a compressed chunk (not the middle slice's) damaged on disk
        with h5py.File(bad, "w") as hf:
            hf.create_dataset("kspace", data=raw, chunks=(1, 16, 20, 6), compression="gzip")
            info = hf["kspace"].id.get_chunk_info(0)
        with open(bad, "r+b") as f:
            f.seek(info.byte_offset + info.size // 2)
            f.write(b"\xff" * 64)
    else:
        with h5py.File(bad, "w") as hf:
            if case == "huge":  # a header claiming 2^20 slices, its data never written
                hf.create_dataset("kspace", shape=(2**20, 16, 20, 6), dtype=np.float32)
            else:
                hf["kspace"] = raw * 1e300 if case == "overflow" else np.zeros_like(raw)
    out = tmp_path / "out"
    err = _fails(capsys, out, src, out, *MULTI, "--split", "3", "0", "0", expect=expect)
    assert str(bad) in err
    assert convert(src, out, *MULTI, "--split", "3", "0", "0", "--skip-bad-files") == 0
    assert [p.name for p in files(out, "multicoil_train")] == ["good0.h5", "good1.h5"]


@pytest.mark.reliability
def test_a_disk_without_room_for_a_volume_is_refused_before_writing(nifti_source, tmp_path,
                                                                     capsys, monkeypatch):
    """libhdf5 writes the volumes itself (and can crash on a full disk): the free space
    is checked first."""
    src, _ = nifti_source
    out = tmp_path / "out"
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(files_module.shutil, "disk_usage",
                        lambda path: usage._replace(free=1000))
    err = _fails(capsys, out, src, out, "--format", "nifti", "--size", 16,
                 expect="no space left on")
    assert ".h5: no space left on" in err and not out.exists()


# Run in a fresh process: its address space after the imports, plus CAP MiB, is the limit.
_UNDER_A_CAP = """
import resource, sys
from clgnet_fastmri import cli
from clgnet_fastmri import files as files_module
cli.command_parser("convert")
def vm(field):
    return next(int(line.split()[1]) << 10 for line in open("/proc/self/status")
                if line.startswith(field))
base, cap = vm("VmSize:"), int(sys.argv[1]) << 20
resource.setrlimit(resource.RLIMIT_AS, (base + cap, resource.RLIM_INFINITY))
code = cli.main(["convert", "--quiet", *sys.argv[2:]])
print("peak MiB above the imports:", (vm("VmPeak:") - base) >> 20)
sys.exit(code)
"""


@pytest.mark.slow
@pytest.mark.reliability
def test_a_volume_larger_than_the_memory_cap_converts_under_it(tmp_path):
    """k-space goes to the file slice by slice and is verified from disk in blocks: a
    12-channel volume of 120 MiB converts with 80 MiB of address space to spare (building
    the file in memory needed about 200 MiB)."""
    images = coil_images(np.random.default_rng(16), slices=64, rows=128, cols=160, coils=12)
    src = tmp_path / "src"
    src.mkdir()
    write_cc359(src / "big.h5", release_kspace(images, centred=True, partial=False))
    out = tmp_path / "out"
    # One malloc arena and one thread: the cap then measures memory, not reservations.
    env = {**os.environ, "MALLOC_ARENA_MAX": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _UNDER_A_CAP, "80", str(src), str(out),
                           *MULTI, "--split", "1", "0", "0"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with h5py.File(out / "multicoil_train" / "big.h5") as hf:
        assert hf["kspace"].nbytes == 120 << 20
        for k in (0, 63):
            np.testing.assert_allclose(image_of(hf["kspace"][k]), images[k] * np.sqrt(128 * 160),
                                       atol=1e-4 * np.abs(images).max() * np.sqrt(128 * 160))


# ---------------------------------------------------------------------------------------------
# End to end: converted NIfTI data trains and tests


@pytest.mark.slow
def test_converted_nifti_trains_and_tests(nifti_source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src, _ = nifti_source
    data = tmp_path / "data"
    assert convert(src, data, "--format", "nifti", "--size", 32, "--phase", "--split", "4",
                   "1", "1") == 0
    tiny = ["--chans", "4", "--num_sfrir", "1", "--num_sfrb", "1", "--vgg_weights", "random",
            "--batch_size", "2", "--num_workers", "0", "--no_progress_bar", "--logger", "csv",
            "--k_negatives", "2"]
    root = tmp_path / "run"
    common = ["--data_path", str(data), "--default_root_dir", str(root)]
    assert cli.main(["train", *tiny, *common, "--max_steps", "2"]) == 0
    checkpoint = root / "checkpoints" / "last.ckpt"  # 2 steps end before any validation
    assert cli.main(["train", *tiny, *common, "--mode", "test", "--checkpoint",
                     str(checkpoint)]) == 0
    recons = sorted((root / "reconstructions").glob("*.h5"))
    assert [p.name for p in recons] == [p.name for p in files(data, "singlecoil_test")]
    assert (root / "metrics.json").is_file()


# ---------------------------------------------------------------------------------------------
# Formats are a registry


def test_a_new_format_is_a_module_and_a_registry_entry(tmp_path, capsys, monkeypatch):
    """All convert needs of a format is its ``Format``: a toy one (stacks of magnitude images
    in ``.img.npy`` files, with an option of its own) converts once registered in FORMATS."""
    def toy_arguments(parser):
        parser.add_argument("--toy-scale", type=float, default=1.0, help="toy: scale images")

    def toy_options(args):
        if args.toy_scale <= 0:
            raise UserError(f"--toy-scale must be positive, not {args.toy_scale}")

    def toy_check(source, args):
        source.cols = np.load(source.path, mmap_mode="r").shape[-1]
        return source

    def toy_read(source, args, singlecoil, rng):
        images = np.load(source.path) * np.float32(args.toy_scale)
        slices = ((np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image), norm="ortho"))
                   .astype(np.complex64), image) for image in images)
        return Converted(images.shape, (16.0, 16.0, 1.0), 1, slices)

    toy = Format("toy", "magnitude stacks (.img.npy)", (".img.npy",), (1, 0, 0), "all train",
                 toy_arguments, toy_options, toy_check, toy_read)
    monkeypatch.setitem(convert_module.FORMATS, "toy", toy)
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    images = np.random.default_rng(20).random((2, 16, 16), dtype=np.float32) + 0.1
    np.save(src / "a.IMG.npy", images)
    np.save(src / "b.npy", images)  # not the format's suffix: ignored
    _fails(capsys, out, src, out, "--format", "toy", "--toy-scale", "0", expect="--toy-scale")
    assert convert(src, out, "--format", "toy", "--toy-scale", "2") == 0
    path = out / "singlecoil_train" / "a.h5"
    assert [p.name for p in out.iterdir()] == ["singlecoil_train"]
    assert check_volume(path, "singlecoil", need_target=True) == 2
    data = read(path)
    np.testing.assert_allclose(data["reconstruction_esc"], 2 * images)
    np.testing.assert_allclose(image_of(data["kspace"]), 2 * images, atol=1e-5)

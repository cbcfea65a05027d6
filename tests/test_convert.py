"""``clgnet-fastmri convert``: CC-359 raw k-space and NIfTI volumes into the fastMRI layout.

Round trips are checked against independent references: numpy's FFT of the source k-space
(CC-359), the source image sliced with numpy (NIfTI), and fastmri's own ``SliceDataset``,
``UnetDataTransform`` and ``ifft2c`` reading what was written.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Dict, List

import fastmri
import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from fastmri.data import SliceDataset
from fastmri.data.transforms import UnetDataTransform, center_crop

from clgnet_fastmri import cli
from clgnet_fastmri.data import convert as convert_module
from clgnet_fastmri.data.checks import check_volume

SPLITS = ("train", "val", "test")


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


def cc359_kspace(rng: np.random.Generator, slices=3, rows=16, cols=20, coils=3) -> np.ndarray:
    """Uncentred k-space of smooth coil images, zero beyond 85 % of the slice-encode lines."""
    y, x = np.meshgrid(np.linspace(-1, 1, rows), np.linspace(-1, 1, cols), indexing="ij")
    head = (x * x + y * y < 0.7).astype(np.float64)
    images = np.empty((slices, rows, cols, coils), dtype=np.complex128)
    for c in range(coils):
        sens = np.exp(-((x - np.cos(c)) ** 2 + (y - np.sin(c)) ** 2)) * np.exp(1j * (c + x))
        for s in range(slices):
            images[s, ..., c] = head * sens * rng.uniform(0.5, 1.5, (rows, cols))
    kspace = np.fft.fft2(images, axes=(1, 2))
    kspace[:, :, int(np.ceil(0.85 * cols)):, :] = 0
    return kspace.astype(np.complex64)


def source_coil_images(kspace: np.ndarray) -> np.ndarray:
    """The releases' reference coil images (orthonormal scale): ``(slices, coils, rows, cols)``."""
    return np.fft.ifft2(kspace.astype(np.complex128), axes=(1, 2), norm="ortho").transpose(
        0, 3, 1, 2)


def nifti_volume(rng: np.random.Generator, shape=(20, 24, 7)) -> np.ndarray:
    """A head-like magnitude volume whose first and last axial slices are empty."""
    vol = np.zeros(shape, dtype=np.float32)
    vol[3:17, 2:22, 1:-1] = rng.uniform(100, 900, (14, 20, shape[2] - 2))
    return vol


def write_nifti(path: Path, data: np.ndarray, affine=None) -> None:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)


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
    assert convert(src, out, "--format", "cc359-raw", "--split", "3", "1", "1") == 0
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
    assert convert(src, out, "--format", "cc359-raw", "--singlecoil", "--split", "5", "0",
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
    assert convert(src, out, "--format", "cc359-raw") == 0  # default: 25/10/10 of 45 -> 3/1/1
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
    assert convert(src, out, "--format", "cc359-raw", "--split", "0", "0", "5",
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
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(4)
    for i in range(3):
        write_cc359(src / f"good{i}.h5", cc359_kspace(rng))
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
    err = _fails(capsys, out, src, out, "--format", "cc359-raw", "--overwrite", expect=expect)
    assert str(bad) in err
    assert (out / "keep.txt").read_text() == "the user's"
    # --skip-bad-files converts the others and names the one left out
    assert convert(src, out, "--format", "cc359-raw", "--overwrite", "--skip-bad-files",
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
    ("negative", "negative values"),
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
    elif case == "negative":
        vol[5, 5, 3] = -1
        write_nifti(bad, vol)
    elif case == "truncated":
        write_nifti(bad, vol)
        raw = gzip.decompress(bad.read_bytes())
        bad.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    else:
        bad.write_bytes(b"\x00" * 100)
    err = _fails(capsys, tmp_path / "out", src, tmp_path / "out", "--format", "nifti",
                 "--size", 16, expect=expect)
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

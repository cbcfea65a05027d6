"""Checked datasets, the data module and the transform: bad files are named, never cached."""

from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from fastmri.data import SliceDataset
from fastmri.data.subsample import RandomMaskFunc
from fastmri.data.transforms import UnetDataTransform

from clgnet_fastmri.data.checks import check_volume, target_folder
from clgnet_fastmri.data.mri_data import CheckedSliceDataset
from clgnet_fastmri.data.transforms import CLGNetDataTransform
from clgnet_fastmri.errors import DataError
from clgnet_fastmri.pl_modules.data_module import CLGNetDataModule

pytestmark = pytest.mark.reliability


def copy_split(knee_data: Path, tmp_path: Path, split: str = "singlecoil_train") -> Path:
    folder = tmp_path / split
    shutil.copytree(knee_data / split, folder)
    return folder


def first_file(folder: Path) -> Path:
    return sorted(folder.glob("*.h5"))[0]


def rewrite(path: Path, edit) -> None:
    with h5py.File(path, "r+") as hf:
        edit(hf)


def replace_dataset(name, data):
    def edit(hf):
        del hf[name]
        hf.create_dataset(name, data=data)

    return edit


def drop_header_field(field: str):
    def edit(hf):
        header = hf["ismrmrd_header"][()].decode()
        start = header.index(f"<{field}>")
        end = header.index(f"</{field}>") + len(f"</{field}>")
        replace_dataset("ismrmrd_header", np.bytes_(header[:start] + header[end:]))(hf)

    return edit


# (how to break the first file, what the message must say)
BREAKAGES = {
    "not-hdf5": (lambda p: p.write_text("hello"), "not a readable HDF5 file"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:2000]), "not a readable HDF5 file"),
    "no-kspace": (lambda p: rewrite(p, lambda hf: hf.__delitem__("kspace")),
                  "has no 'kspace' dataset"),
    "no-header": (lambda p: rewrite(p, lambda hf: hf.__delitem__("ismrmrd_header")),
                  "has no 'ismrmrd_header'"),
    "header-field": (lambda p: rewrite(p, drop_header_field("center")),
                     "lacks encoding/encodingLimits/kspace_encoding_step_1/center"),
    "header-not-xml": (lambda p: rewrite(p, replace_dataset("ismrmrd_header", np.bytes_(b"<a"))),
                       "not valid XML"),
    "kspace-rank": (lambda p: rewrite(p, replace_dataset(
        "kspace", np.zeros((3, 2, 64, 36), np.complex64))), "use --challenge multicoil"),
    "kspace-dtype": (lambda p: rewrite(p, replace_dataset(
        "kspace", np.zeros((3, 64, 36), np.float32))), "expected complex64"),
    "target-slices": (lambda p: rewrite(p, replace_dataset(
        "reconstruction_esc", np.zeros((2, 32, 32), np.float32))), "has 2 slices but"),
    "no-target": (lambda p: rewrite(p, lambda hf: hf.__delitem__("reconstruction_esc")),
                  "has no target 'reconstruction_esc'"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_bad_file_is_named_with_its_problem(knee_data, tmp_path, breakage):
    folder = copy_split(knee_data, tmp_path)
    bad = first_file(folder)
    corrupt, message = BREAKAGES[breakage]
    corrupt(bad)
    with pytest.raises(DataError) as error:
        CheckedSliceDataset(folder, "singlecoil", need_target=True)
    assert str(bad) in str(error.value)
    assert message in str(error.value)


def test_skip_bad_files_keeps_the_good_ones_and_logs(knee_data, tmp_path, caplog):
    folder = copy_split(knee_data, tmp_path)
    bad = first_file(folder)
    bad.write_text("not hdf5")
    with caplog.at_level(logging.WARNING):
        dataset = CheckedSliceDataset(folder, "singlecoil", skip_bad_files=True)
    assert set(dataset.skipped_files) == {bad}
    assert {s.fname for s in dataset.raw_samples} == set(folder.glob("*.h5")) - {bad}
    assert str(bad) in caplog.text


def test_non_finite_slice_is_named_or_skipped(knee_data, tmp_path, caplog):
    folder = copy_split(knee_data, tmp_path)
    bad = first_file(folder)

    def poison(hf):
        kspace = hf["kspace"][()]
        kspace[1, 3, 4] = np.nan
        replace_dataset("kspace", kspace)(hf)

    rewrite(bad, poison)
    transform = CLGNetDataTransform("singlecoil")
    dataset = CheckedSliceDataset(folder, "singlecoil", transform=transform)
    index = next(i for i, s in enumerate(dataset.raw_samples)
                 if s.fname == bad and s.slice_ind == 1)
    with pytest.raises(DataError, match=r"slice 1 of 'kspace' contains NaN or Inf"):
        dataset[index]
    skipping = CheckedSliceDataset(folder, "singlecoil", transform=transform, skip_bad_files=True)
    with caplog.at_level(logging.WARNING):
        sample = skipping[index]
    assert sample.slice_num == 2 and torch.isfinite(sample.image).all()
    assert "slice 1" in caplog.text


def test_empty_missing_and_hidden_only_folders(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        CheckedSliceDataset(tmp_path / "absent", "singlecoil")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no files"):
        CheckedSliceDataset(tmp_path / "empty", "singlecoil")
    (tmp_path / "empty" / ".file.h5.abc.partial").write_bytes(b"half")
    with pytest.raises(DataError, match="holds no files"):
        CheckedSliceDataset(tmp_path / "empty", "singlecoil")


def test_hidden_files_are_ignored(knee_data, tmp_path):
    folder = copy_split(knee_data, tmp_path)
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    (folder / ".file_x.h5.1234.partial").write_bytes(b"half-written")
    dataset = CheckedSliceDataset(folder, "singlecoil")
    assert len(dataset) == 6


def test_every_generated_file_passes_the_checks(knee_data, multicoil_data):
    for root, challenge in ((knee_data, "singlecoil"), (multicoil_data, "multicoil")):
        for split in ("train", "val", "test"):
            for path in (root / f"{challenge}_{split}").glob("*.h5"):
                assert check_volume(path, challenge, need_target=split != "test") == 3


def test_target_folder_finds_the_ground_truth(knee_data):
    val = knee_data / "singlecoil_val"
    assert target_folder(val, "singlecoil") == val
    assert target_folder(knee_data / "singlecoil_test", "singlecoil") == \
        knee_data / "singlecoil_test_gt"
    assert target_folder(knee_data / "singlecoil_test", "multicoil") is None


def test_transform_matches_fastmri_and_crops_aligned(knee_data):
    path = first_file(knee_data / "singlecoil_train")
    with h5py.File(path) as hf:
        kspace, target, attrs = hf["kspace"][1], hf["reconstruction_esc"][1], dict(hf.attrs)
    mask = RandomMaskFunc([0.08], [4])
    reference = UnetDataTransform("singlecoil", mask)(kspace, None, target, attrs, path.name, 1)
    ours = CLGNetDataTransform("singlecoil", mask)(kspace, None, target, attrs, path.name, 1)
    torch.testing.assert_close(ours.image, reference.image)
    cropped = CLGNetDataTransform("singlecoil", mask, crop_size=(16, 20))(
        kspace, None, target, attrs, path.name, 1
    )
    assert cropped.image.shape == cropped.target.shape == (16, 20)
    # The crop window is the same in image and target: find it in the full pair.
    windows = [
        (top, left)
        for top in range(32 - 16 + 1)
        for left in range(32 - 20 + 1)
        if torch.equal(reference.image[top:top + 16, left:left + 20], cropped.image)
        and torch.equal(reference.target[top:top + 16, left:left + 20], cropped.target)
    ]
    assert len(windows) == 1



def test_mask_is_applied_to_fully_sampled_files_only(knee_data):
    """One transform for val, test and challenge folders: a file that holds its own mask is
    already undersampled and must not be masked again."""
    mask = RandomMaskFunc([0.08], [4])
    for split in ("val", "test"):
        folder = knee_data / f"singlecoil_{split}"
        ours = CheckedSliceDataset(folder, "singlecoil",
                                   transform=CLGNetDataTransform("singlecoil", mask))[0]
        as_stored = SliceDataset(folder, "singlecoil", transform=UnetDataTransform("singlecoil"),
                                 use_dataset_cache=False)[0]
        masked = SliceDataset(folder, "singlecoil", use_dataset_cache=False,
                              transform=UnetDataTransform("singlecoil", mask))[0]
        if split == "val":  # fully sampled: undersampled like fastmri's transform does it
            torch.testing.assert_close(ours.image, masked.image)
            assert not torch.allclose(ours.image, as_stored.image)
        else:  # masked on disk: used as it is (fastmri's transform would mask it twice)
            torch.testing.assert_close(ours.image, as_stored.image)
            assert not torch.allclose(masked.image, as_stored.image)

def _module(root: Path, **kwargs) -> CLGNetDataModule:
    mask = RandomMaskFunc([0.08], [4])
    return CLGNetDataModule(
        data_path=root,
        challenge="singlecoil",
        train_transform=CLGNetDataTransform("singlecoil", mask, use_seed=False),
        val_transform=CLGNetDataTransform("singlecoil", mask),
        test_transform=CLGNetDataTransform("singlecoil"),
        batch_size=2,
        **kwargs,
    )


def test_data_module_with_workers_and_combined_train_val(knee_data):
    module = _module(knee_data, num_workers=2, combine_train_val=True)
    loader = module.train_dataloader()
    assert len(loader.dataset) == 12  # train + val
    batches = list(loader)
    assert sum(b.image.shape[0] for b in batches) == 12
    test_batch = next(iter(module.test_dataloader()))
    assert test_batch.image.shape[-2:] == (32, 32)  # test files: header recon size


def test_each_worker_and_rank_gets_its_own_mask_stream(knee_data, monkeypatch):
    import clgnet_fastmri.pl_modules.data_module as data_module

    transform = CLGNetDataTransform("singlecoil", RandomMaskFunc([0.08], [4]), use_seed=False)
    dataset = CheckedSliceDataset(knee_data / "singlecoil_train", "singlecoil",
                                  transform=transform)
    draws = {}
    # Under DDP every rank starts from the same torch seed: the rank must change the stream.
    for rank, worker in ((0, 0), (0, 1), (1, 0), (1, 1)):
        info = SimpleNamespace(dataset=dataset, seed=1234 + worker, num_workers=2, id=worker)
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)
        monkeypatch.setattr(data_module.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(data_module.dist, "get_rank", lambda: rank)
        data_module.seed_worker_masks(worker)
        draws[rank, worker] = tuple(transform.mask_func.rng.randint(0, 2**31, 4))
    assert len(set(draws.values())) == 4


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_dataset_cache_is_never_read_or_written(knee_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "executed"
    with open("dataset_cache.pkl", "wb") as f:
        pickle.dump({knee_data / "singlecoil_train": _Payload(marker)}, f)
    module = _module(knee_data, num_workers=0)
    module.prepare_data()
    for loader in (module.train_dataloader(), module.val_dataloader(), module.test_dataloader()):
        next(iter(loader))
    assert not marker.exists()
    with pytest.raises(ValueError, match="unsafe"):
        _module(knee_data, use_dataset_cache_file=True)

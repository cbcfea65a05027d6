"""fastmri's SliceDataset with every file checked and no pickle cache."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
from fastmri.data import SliceDataset

from ..errors import DataError
from .checks import check_challenge, check_finite, check_volume, open_h5, scan_folder

log = logging.getLogger(__name__)


class CheckedSliceDataset(SliceDataset):
    """``fastmri.data.SliceDataset`` that reports a bad file by name instead of crashing in h5py.

    Differences from the parent, and why:

    - Every file is checked (``checks.check_volume``) before fastmri parses it, and each slice's
      k-space and target are checked for NaN/Inf when read; a problem raises a ``DataError``
      that names the file and the fix. With ``skip_bad_files=True`` bad files are left out and
      a bad slice is replaced by the next good one, each logged as a warning: for long jobs
      over thousands of files where one bad volume should not stop the run.
    - Entries that cannot be files (a dangling symbolic link, a link loop, an unreadable or
      special file) are bad files too, named with the reason (``checks.scan_folder``);
      hidden entries (``.DS_Store``, ``.*.partial`` leftovers of an interrupted write) and
      subfolders are ignored.
    - fastmri's dataset cache is never used: it is a pickle written to the working directory,
      and unpickling a file one did not write can run arbitrary code.
    - ``need_target`` makes a missing target an error (train and val splits).

    Args:
        root: Folder of fastMRI HDF5 files.
        challenge: "singlecoil" or "multicoil".
        transform: Called as ``transform(kspace, mask, target, attrs, fname, slice_num)``.
        need_target: Whether every file must hold the target image.
        skip_bad_files: Skip (and log) bad files and slices instead of raising.
        sample_rate, volume_sample_rate, num_cols, raw_sample_filter: As in SliceDataset.
    """

    def __init__(
        self,
        root: Union[str, os.PathLike],
        challenge: str,
        transform: Optional[Callable] = None,
        need_target: bool = False,
        skip_bad_files: bool = False,
        sample_rate: Optional[float] = None,
        volume_sample_rate: Optional[float] = None,
        num_cols: Optional[Tuple[int]] = None,
        raw_sample_filter: Optional[Callable] = None,
    ):
        self.challenge = check_challenge(challenge)
        self.need_target = need_target
        self.skip_bad_files = skip_bad_files
        self.skipped_files: Dict[Path, DataError] = {}
        files, bad = scan_folder(root, f"{challenge} data")
        if not files and not bad:
            raise DataError(root, f"{challenge} data folder holds no files", "check the path")
        for entry, exc in bad.items():
            if not skip_bad_files:
                raise exc
            log.warning("skipping bad file: %s", exc)
            self.skipped_files[entry] = exc
        self._files = set(files)
        super().__init__(
            root=root,
            challenge=challenge,
            transform=transform,
            use_dataset_cache=False,
            sample_rate=sample_rate,
            volume_sample_rate=volume_sample_rate,
            num_cols=num_cols,
            raw_sample_filter=raw_sample_filter,
        )
        if self.skipped_files:
            log.warning("%s: left out %d bad files", root, len(self.skipped_files))
        if not self.raw_samples:
            raise DataError(
                root,
                "no usable slices"
                + (f" ({len(self.skipped_files)} bad files skipped)"
                   if self.skipped_files else ""),
                "check the folder and the --challenge",
            )

    def _retrieve_metadata(self, fname: Path) -> Tuple[Dict[str, Any], int]:
        # SliceDataset calls this for every entry of the folder; returning 0 slices drops one
        # (a hidden entry, a subfolder, or a bad entry scan_folder reported).
        if fname not in self._files:
            return {}, 0
        try:
            check_volume(fname, self.challenge, self.need_target)
        except DataError as exc:
            if not self.skip_bad_files:
                raise
            log.warning("skipping bad file: %s", exc)
            self.skipped_files[fname] = exc
            return {}, 0
        return super()._retrieve_metadata(fname)

    def __getitem__(self, i: int) -> Any:
        for attempt in range(len(self.raw_samples)):
            index = (i + attempt) % len(self.raw_samples)
            try:
                return self._load(index)
            except DataError as exc:
                if not self.skip_bad_files:
                    raise
                log.warning("skipping bad slice: %s", exc)
        raise DataError(
            self.raw_samples[i].fname.parent, "every slice is unreadable or non-finite"
        )

    def _load(self, i: int) -> Any:
        # fastmri reads and transforms in one step; the finiteness check needs the raw arrays.
        fname, dataslice, metadata = self.raw_samples[i]
        with open_h5(fname) as hf:
            kspace = hf["kspace"][dataslice]
            mask = np.asarray(hf["mask"]) if "mask" in hf else None
            target = hf[self.recons_key][dataslice] if self.recons_key in hf else None
            attrs = dict(hf.attrs)
        attrs.update(metadata)
        check_finite(kspace, fname, f"slice {dataslice} of 'kspace'")
        if target is not None:
            check_finite(target, fname, f"slice {dataslice} of '{self.recons_key}'")
        if self.transform is None:
            return kspace, mask, target, attrs, fname.name, dataslice
        return self.transform(kspace, mask, target, attrs, fname.name, dataslice)


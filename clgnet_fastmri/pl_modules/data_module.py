"""fastmri's FastMriDataModule on checked datasets, without its pickle cache."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
from fastmri.data import VolumeSampler
from fastmri.pl_modules import FastMriDataModule
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from ..data.mri_data import CheckedSliceDataset


def seed_worker_masks(worker_id: int) -> None:
    """Give each data-loader worker (and each DDP rank) its own stream of random masks.

    fastmri's own ``worker_init_fn`` does this only for its two dataset classes and fails on any
    dataset whose transform has no ``mask_func``; this one handles any dataset, including a
    ``ConcatDataset`` of train and val.
    """
    info = torch.utils.data.get_worker_info()
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    datasets = getattr(info.dataset, "datasets", [info.dataset])
    # info.seed is the loader's base seed + worker_id; every (rank, worker, dataset) triple
    # gets its own offset from the base seed.
    base_seed = info.seed - worker_id
    for index, dataset in enumerate(datasets):
        mask_func = getattr(getattr(dataset, "transform", None), "mask_func", None)
        if mask_func is not None:
            seed = base_seed + (rank * info.num_workers + worker_id) * len(datasets) + index
            mask_func.rng.seed(seed % (2**32 - 1))


class CLGNetDataModule(FastMriDataModule):
    """``fastmri.pl_modules.FastMriDataModule`` reading ``CheckedSliceDataset``s.

    Same arguments, folder layout (``<data_path>/<challenge>_{train,val,test}``) and samplers
    (``DistributedSampler`` for training and fastmri's ``VolumeSampler`` for val/test under
    DDP, so that each volume is evaluated whole on one rank), with these changes:
    bad files are reported by name (or skipped with ``skip_bad_files``), fastmri's pickle
    dataset cache is never read or written (``use_dataset_cache_file`` is not accepted), and
    the workers' masks are seeded by ``seed_worker_masks``.
    """

    def __init__(self, *args, skip_bad_files: bool = False, **kwargs):
        if kwargs.pop("use_dataset_cache_file", False):
            raise ValueError("the pickle dataset cache is unsafe and not supported")
        super().__init__(*args, use_dataset_cache_file=False, **kwargs)
        self.skip_bad_files = skip_bad_files

    def prepare_data(self) -> None:
        """Nothing to prepare: fastmri builds its pickle cache here, this module keeps none."""

    def _create_data_loader(
        self,
        data_transform: Callable,
        data_partition: str,
        sample_rate: Optional[float] = None,
        volume_sample_rate: Optional[float] = None,
    ) -> DataLoader:
        is_train = data_partition == "train"
        split = "test" if data_partition == "challenge" else data_partition
        rates = {
            "train": (self.sample_rate, self.volume_sample_rate),
            "val": (self.val_sample_rate, self.val_volume_sample_rate),
            "test": (self.test_sample_rate, self.test_volume_sample_rate),
        }[split]
        sample_rate = rates[0] if sample_rate is None else sample_rate
        volume_sample_rate = rates[1] if volume_sample_rate is None else volume_sample_rate

        if is_train and self.combine_train_val:
            roots = [self.data_path / f"{self.challenge}_{part}" for part in ("train", "val")]
        elif split == "test" and self.test_path is not None:
            roots = [Path(self.test_path)]
        else:
            roots = [self.data_path / f"{self.challenge}_{data_partition}"]
        datasets = [
            CheckedSliceDataset(
                root,
                self.challenge,
                transform=data_transform,
                need_target=split != "test",
                skip_bad_files=self.skip_bad_files,
                sample_rate=sample_rate,
                volume_sample_rate=volume_sample_rate,
                raw_sample_filter={
                    "train": self.train_filter,
                    "val": self.val_filter,
                    "test": self.test_filter,
                }[split],
            )
            for root in roots
        ]
        dataset: Dataset = datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)

        sampler = None
        if self.distributed_sampler:
            sampler = (DistributedSampler(dataset) if is_train
                       else VolumeSampler(dataset, shuffle=False))
        return DataLoader(
            dataset=dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            worker_init_fn=seed_worker_masks,
            sampler=sampler,
            shuffle=is_train and sampler is None,
            persistent_workers=self.num_workers > 0,
        )

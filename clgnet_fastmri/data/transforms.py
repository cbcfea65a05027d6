"""The data transforms: CLGNet's (fastmri's UnetDataTransform, plus random crops for
training) and the k-space one of the VarNet baseline."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from fastmri.data.subsample import MaskFunc
from fastmri.data.transforms import UnetDataTransform, UnetSample, VarNetDataTransform


class CLGNetDataTransform:
    """Zero-filled magnitude image and target, instance-normalised as fastmri's U-Net sees them.

    CLGNet takes the same input as fastmri's U-Net baseline (docs/design.md,
    *Architecture*), so this delegates to
    ``fastmri.data.transforms.UnetDataTransform`` and returns its ``UnetSample``: ``image`` and
    ``target`` of shape (H, W), normalised by the zero-filled image's mean and std and clamped
    to ±6; ``mean``/``std`` undo it. ``image`` doubles as the contrastive loss's negative.

    Args:
        which_challenge: "singlecoil" or "multicoil".
        mask_func: fastmri mask function, applied to fully sampled k-space only: a file that
            holds a ``mask`` (a test or challenge file) is already undersampled and is used as
            it is, so one transform serves validation, test and challenge folders alike.
        use_seed: Seed the mask from the file name (the same mask for every slice of a volume,
            every epoch): True for validation, False for training.
        crop_size: If given, a random (height, width) crop of image and target at the same
            place; smaller images are left whole. For training only: crops cut the cost of a
            step and add augmentation. The Fourier units then see a smaller periodic field at
            training time than at test time, which Fast-Fourier-Convolution models tolerate.
    """

    def __init__(
        self,
        which_challenge: str,
        mask_func: Optional[MaskFunc] = None,
        use_seed: bool = True,
        crop_size: Optional[Tuple[int, int]] = None,
    ):
        self.unet_transform = UnetDataTransform(which_challenge, mask_func, use_seed)
        self.masked_transform = UnetDataTransform(which_challenge, None, use_seed)
        self.crop_size = crop_size

    @property
    def mask_func(self) -> Optional[MaskFunc]:
        # Read by the data loader's worker_init_fn to seed each worker's masks.
        return self.unet_transform.mask_func

    def __call__(
        self,
        kspace: np.ndarray,
        mask: Optional[np.ndarray],
        target: Optional[np.ndarray],
        attrs: Dict,
        fname: str,
        slice_num: int,
    ) -> UnetSample:
        transform = self.unet_transform if mask is None else self.masked_transform
        sample = transform(kspace, mask, target, attrs, fname, slice_num)
        if self.crop_size is None:
            return sample
        height, width = sample.image.shape[-2:]
        crop_h, crop_w = min(self.crop_size[0], height), min(self.crop_size[1], width)
        top = int(torch.randint(0, height - crop_h + 1, ()))
        left = int(torch.randint(0, width - crop_w + 1, ()))
        window = (..., slice(top, top + crop_h), slice(left, left + crop_w))
        return sample._replace(image=sample.image[window], target=sample.target[window])


class KspaceTransform:
    """fastmri's ``VarNetDataTransform`` that, like ``CLGNetDataTransform``, uses the mask a
    file holds (a test or challenge file: k-space already undersampled) and applies
    ``mask_func`` only to fully sampled k-space, so one transform serves every split."""

    def __init__(self, mask_func: Optional[MaskFunc] = None, use_seed: bool = True):
        self.masking = VarNetDataTransform(mask_func, use_seed)
        self.masked = VarNetDataTransform(None, use_seed)

    @property
    def mask_func(self) -> Optional[MaskFunc]:
        # Read by the data loader's worker_init_fn to seed each worker's masks.
        return self.masking.mask_func

    def __call__(self, kspace: np.ndarray, mask: Optional[np.ndarray], *rest: Any):
        return (self.masking if mask is None else self.masked)(kspace, mask, *rest)

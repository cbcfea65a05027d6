"""The orientation augmentation of adversarial banding removal (Defazio et al., NeurIPS 2020).

Banding lies along the phase-encoding direction, which in fastMRI data is always the k-space
*columns* (the width of the image). To let an adversary see banding, and nothing else, the
orientation of the *anatomy* must vary while the undersampling does not: fastMRI's
``banding_removal`` code transposes the fully-sampled k-space and the target of half the
training slices *before* the mask is applied, so the network still undersamples columns, and
records the flip. Transposing the reconstruction of a flipped slice back (``reorient``) puts
every anatomy in its acquired orientation; what still depends on the flip is the direction of
the network's phase-encoding artefacts, which is the one thing the adversary can learn to
see.

Why not transpose the network's input image instead: its aliasing is already along the
columns, so input, target and output would all turn together and, once turned back, carry
no trace of the flip. The augmentation must act before undersampling, on k-space.

What the flip changes besides the artefacts' direction: only the anatomy's orientation
relative to the undersampling. fastMRI knee k-space is 640 x 368 with the readout (rows) 2x
oversampled, so a transposed slice is undersampled along the oversampled axis. That changes
little, since a 4x mask still drops three quarters of the k-space lines of either axis, so
this module transposes the k-space as it is, as fastMRI's code does. The anatomy matters
more: a coronal knee has more energy at high frequencies across its long bones than along
them, so the zero-filled error of a transposed slice is smaller than that of the same slice
as acquired. A reconstruction whose residual artefacts follow the phase-encoding direction
in strength as well as in direction therefore also gives the label away; removing that is
part of what the adversary asks of the network.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

from clgnet_fastmri.data.transforms import CLGNetDataTransform


class OrientedSample(NamedTuple):
    """A training sample and its orientation label.

    ``sample`` is the ``UnetSample`` of ``CLGNetDataTransform``; ``transposed`` is True when
    the slice was transposed before undersampling. After the default collate, ``sample`` is a
    batch of the same type and ``transposed`` a bool tensor of shape (B,).
    """

    sample: Any
    transposed: Any


class RandomTranspose(CLGNetDataTransform):
    """``CLGNetDataTransform`` that first transposes half the slices, before undersampling.

    With probability ``p`` the fully-sampled k-space and the target are transposed, then the
    transform runs as usual (mask, zero-filled image, crop, normalisation): network input,
    target and the contrastive loss's negatives (the zero-filled images) all come from the
    same transposed slice. Returns ``OrientedSample(sample, transposed)``. The random crop
    must be square (``reorient`` refuses other shapes).

    The coin is torch's global RNG, which Lightning's ``seed_everything(workers=True)`` and
    the data loader seed per process and worker.

    Args:
        *args, **kwargs: ``CLGNetDataTransform``'s (for training: a mask function and
            ``use_seed=False``).
        p: Probability of transposing a slice (fastMRI's code: 0.5, balanced labels).
    """

    def __init__(self, *args: Any, p: float = 0.5, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], not {p}")
        self.p = p

    def __call__(self, kspace: np.ndarray, mask: Optional[np.ndarray],
                 target: Optional[np.ndarray], attrs: Dict, fname: str, slice_num: int
                 ) -> OrientedSample:
        if mask is not None:
            raise ValueError(
                f"{fname}: k-space is already undersampled; the orientation augmentation "
                "needs fully sampled training data"
            )
        transposed = bool(torch.rand(()) < self.p)
        if transposed:
            # The last two axes for singlecoil (rows, cols) and multicoil (coils, rows, cols).
            kspace = np.swapaxes(kspace, -1, -2)
            if target is not None:
                target = np.swapaxes(target, -1, -2)
        sample = super().__call__(kspace, mask, target, attrs, fname, slice_num)
        return OrientedSample(sample, transposed)


def reorient(images: Tensor, transposed: Tensor) -> Tensor:
    """Transpose back the images of transposed slices: ``B x ... x H x W``, ``transposed``
    (B,) bool. Every anatomy is then in its acquired orientation and the phase-encoding
    direction of an image is the columns when ``transposed`` is False, the rows otherwise.

    Raises:
        ValueError: for non-square images (a transposed image would change shape, and the
            shape alone would give the label away).
    """
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(
            f"orientation adversarial training needs square images, not "
            f"{images.shape[-2]}x{images.shape[-1]}; use a square training crop"
        )
    flip = transposed.to(device=images.device, dtype=torch.bool)
    flip = flip.view(-1, *([1] * (images.dim() - 1)))
    return torch.where(flip, images.transpose(-2, -1), images)

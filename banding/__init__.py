"""Banding-artefact removal by orientation-adversarial training, for CLGNet and fastmri's U-Net.

Method: Defazio, Murrell, Recht, "MRI Banding Removal via Adversarial Training", NeurIPS 2020
(fastMRI repository, ``banding_removal/``). Half the training slices are transposed before
undersampling (``augment``); an adversary (``adversary``) learns to tell from a reoriented
reconstruction which ones, which it can only do from the direction of phase-encoding
artefacts; the reconstruction network is trained to leave it at chance (``module``).
``clgnet_fastmri.metrics.banding_score`` (re-exported here) measures banding without an
adversary, for evaluation. ``extension`` plugs the method into ``clgnet-fastmri train
--banding`` (declared as a ``clgnet_fastmri.extensions`` entry point).
"""

from clgnet_fastmri.metrics import banding_score, directional_energy, wedge_masks

from .adversary import OrientationAdversary
from .augment import OrientedSample, RandomTranspose, reorient
from .module import (
    BandingCLGNetModule,
    BandingUnetModule,
    OrientationAdversarialMixin,
    add_banding_arguments,
    build_module,
)

__all__ = [
    "BandingCLGNetModule",
    "BandingUnetModule",
    "OrientationAdversarialMixin",
    "OrientationAdversary",
    "OrientedSample",
    "RandomTranspose",
    "add_banding_arguments",
    "banding_score",
    "build_module",
    "directional_energy",
    "reorient",
    "wedge_masks",
]

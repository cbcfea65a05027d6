"""BatchNorm running statistics recomputed for the current weights ("precise BN").

A BatchNorm layer in eval mode normalises with running averages of the batch statistics
seen in training (momentum 0.1: an average over the last twenty or so batches), each taken
under the weights of its own step. While the learning rate is high the weights move enough
between those steps for the averages to miss the current network's statistics. In CLGNet's
Fourier units the normalised features are spectra: an error in their statistics shifts the
whole image, and shows first in the background, where SSIM compares smooth noise with
smooth noise. At the end of a decayed schedule the weights stand still and the running
averages are right.

``refresh_batchnorm_statistics`` replaces them by the exact average over a fixed number of
training batches under the current weights (``torch.optim.swa_utils.update_bn``).
"""

from __future__ import annotations

import copy
from itertools import islice
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def refresh_batchnorm_statistics(network: nn.Module, loader: DataLoader, num_batches: int,
                                 seed: int, to_input: Callable[[Any], torch.Tensor]) -> None:
    """Set every BatchNorm's running mean and variance in ``network`` to their average over
    ``num_batches`` random batches of ``loader``'s dataset (batch statistics under the
    current weights).

    ``network`` is called on ``to_input(batch)`` for each batch. The batches
    come from a copy of the dataset drawn with a private generator seeded by ``seed``, and
    torch's global random state is restored afterwards, so that the training run (its data
    order, masks and crops) goes on exactly as without the refresh. Ranks that pass the same
    ``seed`` compute the same statistics.
    """
    dataset = copy.deepcopy(loader.dataset)  # the transform's mask generator stays untouched
    generator = torch.Generator().manual_seed(seed)
    private = DataLoader(
        dataset, batch_size=loader.batch_size, sampler=RandomSampler(dataset, generator=generator),
        num_workers=loader.num_workers, collate_fn=loader.collate_fn,
        worker_init_fn=loader.worker_init_fn, generator=generator,
    )
    with torch.random.fork_rng(devices=[]):
        inputs = (to_input(batch) for batch in islice(private, num_batches))
        torch.optim.swa_utils.update_bn(inputs, network)

"""Lightning's notes that say nothing about our runs, hidden while they run.

Hidden: the advertising tips of ``rank_zero_info``, torch's ``LeafSpec`` deprecation that
Lightning's own code triggers, the eval-mode warning about the contrastive loss's VGG19 (frozen
in eval mode on purpose), and the warning about a checkpoint folder in use (the training
command gives a new run a new folder; a run that writes into a used one resumes it). With
``info=False`` also Lightning's info lines (the devices it found) and its ``PossibleUserWarning``
hints (loader workers): ``predict``'s output is its files, and its errors stay one line.
Filters and levels are restored afterwards, for the caller's own code.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

from pytorch_lightning.utilities.warnings import PossibleUserWarning

#: The loggers of Lightning's ``rank_zero_info`` (whichever package was imported last).
LIGHTNING_INFO_LOGGERS = ("pytorch_lightning.utilities.rank_zero",
                          "lightning_fabric.utilities.rank_zero")
#: Lightning's package loggers (their info lines: devices found, ...).
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric")


@contextlib.contextmanager
def quiet_lightning(info: bool = True) -> Iterator[None]:
    """Run the body with Lightning's irrelevant notes hidden (see the module doc)."""
    tip_loggers = [logging.getLogger(name) for name in LIGHTNING_INFO_LOGGERS]
    package_loggers = [] if info else [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [logger.level for logger in package_loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* is not empty")
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`",
                                category=FutureWarning)
        if not info:
            warnings.simplefilter("ignore", PossibleUserWarning)
        for logger in tip_loggers:
            logger.addFilter(_no_tips)
        for logger in package_loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger in tip_loggers:
                logger.removeFilter(_no_tips)
            for logger, level in zip(package_loggers, levels):
                logger.setLevel(level)


def _no_tips(record: logging.LogRecord) -> bool:
    return "Tip: " not in record.getMessage()

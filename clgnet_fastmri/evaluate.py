"""Official fastMRI scoring of a folder of reconstructions: ``clgnet-fastmri evaluate``.

The numbers are those of ``fastmri.evaluate.evaluate()``: the same metric functions
(``fastmri.evaluate.METRIC_FUNCS``: MSE, NMSE, PSNR and SSIM of each whole volume, with the
volume's maximum as the peak value), the same centre crop to the target's width, the same
acquisition/acceleration filters, and runstats for mean and spread. What this adds:
per-volume numbers, a table and a JSON file, a message naming any prediction file that is
missing or misshapen instead of an h5py traceback (fastmri's own ``python -m
fastmri.evaluate`` also crashes when printing on today's numpy), and a BANDING column
(``banding.metric.banding_score``, in dB: error energy in streaks along the phase-encoding
direction, the image width, over that across it; 0 = no banding). It costs one FFT of each
volume, well under the cost of SSIM, so it is always reported.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

import numpy as np
from fastmri.data.transforms import center_crop
from fastmri.evaluate import METRIC_FUNCS
from runstats import Statistics

from .data.checks import TARGET_KEYS, check_challenge, list_volumes, open_h5, require_dataset
from .errors import DataError, UserError
from .files import atomic_output
from .metrics import banding_score

ACQUISITIONS = ("CORPD_FBK", "CORPDFS_FBK", "AXT1", "AXT1PRE", "AXT1POST", "AXT2", "AXFLAIR")

MetricFunc = Callable[[np.ndarray, np.ndarray], float]


@dataclass
class EvaluationResult:
    """Per-volume metrics and their runstats summary (mean and standard deviation)."""

    volumes: Dict[str, Dict[str, float]] = field(default_factory=dict)
    stats: Dict[str, Statistics] = field(default_factory=dict)

    def add(self, name: str, values: Mapping[str, float]) -> None:
        # fastmri's ssim returns a 1-element array (what breaks `python -m fastmri.evaluate`).
        self.volumes[name] = {k: float(np.squeeze(v)) for k, v in values.items()}
        for metric, value in self.volumes[name].items():
            self.stats.setdefault(metric, Statistics()).push(value)

    def means(self) -> Dict[str, float]:
        return {metric: stat.mean() for metric, stat in self.stats.items()}

    def stddevs(self) -> Dict[str, float]:
        # runstats' stddev needs two values; one volume has no spread.
        return {
            metric: stat.stddev() if len(stat) > 1 else 0.0 for metric, stat in self.stats.items()
        }

    def to_json(self) -> Dict:
        return {
            "num_volumes": len(self.volumes),
            "mean": self.means(),
            "stddev": self.stddevs(),
            "volumes": self.volumes,
        }


def crop_pair(target: np.ndarray, recons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fastmri.evaluate's crop: both volumes to a square of the target's width."""
    size = (target.shape[-1], target.shape[-1])
    return center_crop(target, size), center_crop(recons, size)


def evaluate_folder(
    target_path: os.PathLike,
    predictions_path: os.PathLike,
    challenge: str,
    acceleration: Optional[int] = None,
    acquisition: Optional[str] = None,
    extra_metrics: Optional[Mapping[str, MetricFunc]] = None,
) -> EvaluationResult:
    """Score every target volume against the prediction file of the same name.

    Args:
        target_path: Folder of ground-truth files (``reconstruction_esc`` or ``_rss``).
        predictions_path: Folder of files with a ``reconstruction`` dataset (slices, H, W).
        challenge: "singlecoil" or "multicoil", which picks the target key.
        acceleration, acquisition: Only score targets with these attributes, as fastmri does.
        extra_metrics: More ``f(target, recons) -> float`` columns, computed on the same crop.

    Raises:
        DataError: naming the file, for a missing or unreadable prediction, a missing key, or
            a slice count or size that does not match the target.
    """
    recons_key = TARGET_KEYS[check_challenge(challenge)]
    metric_funcs: Dict[str, MetricFunc] = {**METRIC_FUNCS, **(extra_metrics or {})}
    predictions_path = Path(predictions_path)
    result = EvaluationResult()
    for target_file in list_volumes(target_path, "target"):
        with open_h5(target_file) as hf:
            if acquisition and _attr(hf, "acquisition", target_file) != acquisition:
                continue
            if acceleration and _attr(hf, "acceleration", target_file) != acceleration:
                continue
            target = require_dataset(
                hf, recons_key, target_file, (3,), f"{challenge} targets hold '{recons_key}'"
            )[()]
        recons = read_reconstruction(predictions_path / target_file.name, target.shape)
        target, recons = crop_pair(target, recons)
        result.add(
            target_file.name, {name: func(target, recons) for name, func in metric_funcs.items()}
        )
    if not result.volumes:
        raise UserError(f"{target_path}: no target volume matches the acquisition/acceleration filter")
    return result


def read_reconstruction(path: Path, target_shape: tuple) -> np.ndarray:
    """Read a prediction's ``reconstruction`` and check it can be scored against the target."""
    if not path.is_file():
        raise DataError(path, "prediction file is missing", "every target volume needs one")
    with open_h5(path) as hf:
        recons = require_dataset(
            hf, "reconstruction", path, (3,), "predictions hold a (slices, H, W) 'reconstruction'"
        )[()]
    if recons.shape[0] != target_shape[0]:
        raise DataError(
            path, f"has {recons.shape[0]} slices, the target has {target_shape[0]}"
        )
    side = target_shape[-1]
    if min(recons.shape[-2:]) < side:
        raise DataError(
            path,
            f"reconstruction is {recons.shape[1]}x{recons.shape[2]}, smaller than the "
            f"{side}x{side} region scored",
            "write reconstructions at the target size",
        )
    if not np.isfinite(recons).all():
        raise DataError(path, "reconstruction contains NaN or Inf values")
    return recons


def _attr(hf, name: str, path: Path):
    if name not in hf.attrs:
        raise DataError(
            path,
            f"has no '{name}' attribute to filter on",
            f"drop --{name} or score test ground truth that records it",
        )
    value = hf.attrs[name]
    return value.decode() if isinstance(value, bytes) else value


def format_table(result: EvaluationResult) -> str:
    """Per-volume rows, then mean and ± 2 standard deviations as fastmri prints them."""
    metrics = list(result.stats)
    width = max([len("volume")] + [len(name) for name in result.volumes])
    lines = ["  ".join([f"{'volume':<{width}}"] + [f"{m:>12}" for m in metrics])]
    for name, values in result.volumes.items():
        lines.append("  ".join([f"{name:<{width}}"] + [f"{values[m]:>12.4g}" for m in metrics]))
    means, stddevs = result.means(), result.stddevs()
    lines.append("  ".join([f"{'mean':<{width}}"] + [f"{means[m]:>12.4g}" for m in metrics]))
    lines.append(
        "  ".join([f"{'+/- 2 std':<{width}}"] + [f"{2 * stddevs[m]:>12.4g}" for m in metrics])
    )
    return "\n".join(lines)


def write_json(result: EvaluationResult, path: os.PathLike, **context) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps({**context, **result.to_json()}, indent=2) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target-path", type=Path, required=True, help="ground-truth folder")
    parser.add_argument(
        "--predictions-path", type=Path, required=True, help="folder of reconstructions"
    )
    parser.add_argument("--challenge", choices=("singlecoil", "multicoil"), required=True)
    parser.add_argument("--acceleration", type=int, default=None)
    parser.add_argument("--acquisition", choices=ACQUISITIONS, default=None)
    parser.add_argument(
        "--output", type=Path, default=None,
        help="JSON file for the results (default: <predictions-path>_metrics.json beside the "
        "folder, so the submission folder holds only reconstructions)",
    )


def score_folder(
    target_path: Path,
    predictions_path: Path,
    challenge: str,
    acceleration: Optional[int] = None,
    acquisition: Optional[str] = None,
) -> EvaluationResult:
    """``evaluate_folder`` plus the BANDING column: what ``evaluate`` and the demo report."""
    return evaluate_folder(target_path, predictions_path, challenge, acceleration, acquisition,
                           extra_metrics={"BANDING": banding_score})


def run(args: argparse.Namespace) -> int:
    result = score_folder(
        args.target_path, args.predictions_path, args.challenge, args.acceleration,
        args.acquisition
    )
    print(format_table(result))
    output = args.output or args.predictions_path.with_name(
        args.predictions_path.name + "_metrics.json"
    )
    write_json(
        result,
        output,
        challenge=args.challenge,
        target_path=str(args.target_path),
        predictions_path=str(args.predictions_path),
        acceleration=args.acceleration,
        acquisition=args.acquisition,
    )
    print(f"metrics written to {output}")
    return 0

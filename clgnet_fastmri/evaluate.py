"""Official fastMRI scoring of a folder of reconstructions: ``clgnet-fastmri evaluate``.

The numbers are those of ``fastmri.evaluate.evaluate()``: the same metric functions
(``fastmri.evaluate.METRIC_FUNCS``: MSE, NMSE, PSNR and SSIM of each whole volume, with the
volume's maximum as the peak value), the same centre crop to the target's width, the same
acquisition/acceleration filters, and runstats for mean and spread. What this adds:
per-volume numbers, a table and a strict JSON file, a message naming any volume that cannot
be scored (a prediction missing, misshapen, complex or not finite; a target not finite or
all zero; a metric that comes out infinite) instead of an h5py traceback or a NaN mean
(fastmri's own ``python -m fastmri.evaluate`` also crashes when printing on today's numpy),
predictions found under fastMRI's ``_v2`` names, and a BANDING column
(``clgnet_fastmri.metrics.banding_score``, in dB: error energy in streaks along the phase-encoding
direction, the image width, over that across it; 0 = no banding). It costs one FFT of each
volume, well under the cost of SSIM, so it is always reported.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional

import numpy as np
from fastmri.data.transforms import center_crop
from fastmri.evaluate import METRIC_FUNCS
from runstats import Statistics

from .data.checks import (
    check_challenge,
    list_volumes,
    open_h5,
    require_dataset,
    submission_name,
)
from .data.fastmri_layout import ACQUISITIONS, CHALLENGES, TARGET_KEYS
from .errors import DataError, UserError
from .files import refuse_overlap, write_json
from .metrics import banding_score

MetricFunc = Callable[[np.ndarray, np.ndarray], float]


@dataclass
class EvaluationResult:
    """Per-volume metrics and their runstats summary (mean and standard deviation)."""

    volumes: Dict[str, Dict[str, float]] = field(default_factory=dict)
    stats: Dict[str, Statistics] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)  # target name -> why
    matched_v2: List[str] = field(default_factory=list)  # targets scored against NAME_v2.h5

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
            "skipped": self.skipped,
            "matched_v2": self.matched_v2,
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
    skip_nonfinite: bool = False,
) -> EvaluationResult:
    """Score every target volume against the prediction file of the same name.

    The prediction of target ``NAME.h5`` is ``NAME.h5`` or, failing that, fastMRI's
    ``NAME_v2.h5`` (``predict --v2_names``); both present is an error.

    Args:
        target_path: Folder of ground-truth files (``reconstruction_esc`` or ``_rss``).
        predictions_path: Folder of files with a ``reconstruction`` dataset (slices, H, W).
        challenge: "singlecoil" or "multicoil", which picks the target key.
        acceleration, acquisition: Only score targets with these attributes, as fastmri does.
        extra_metrics: More ``f(target, recons) -> float`` columns, computed on the same crop.
        skip_nonfinite: Leave out (and list in ``skipped``) a volume whose target holds NaN
            or Inf or is all zero, or whose metrics are not finite, instead of raising. A
            prediction with NaN or Inf is always an error: skipping it would flatter the
            method.

    Raises:
        DataError: naming the file, for a missing, ambiguous or unreadable prediction, a
            missing key, a slice count or size that does not match the target, a complex
            or non-finite prediction, and (without ``skip_nonfinite``) a target or metric
            that cannot be scored.
    """
    recons_key = TARGET_KEYS[check_challenge(challenge)]
    metric_funcs: Dict[str, MetricFunc] = {**METRIC_FUNCS, **(extra_metrics or {})}
    predictions_path = Path(predictions_path)
    if not predictions_path.is_dir():
        raise DataError(predictions_path, "predictions folder not found", "check the path")
    result = EvaluationResult()
    for target_file in list_volumes(target_path, "target"):
        with open_h5(target_file) as hf:
            if acquisition and _attr(hf, "acquisition", target_file) != acquisition:
                continue
            if acceleration and _attr(hf, "acceleration", target_file) != acceleration:
                continue
            target = _real(require_dataset(
                hf, recons_key, target_file, (3,), f"{challenge} targets hold '{recons_key}'"
            ), target_file)
        prediction = prediction_file(predictions_path, target_file.name, result)
        recons = read_reconstruction(prediction, target.shape)
        try:
            problem = _target_problem(target, recons_key)
            if problem:
                raise DataError(target_file, problem, _SKIP_FIX)
            target, recons = crop_pair(target, recons)
            values = {name: func(target, recons) for name, func in metric_funcs.items()}
            _check_metrics(values, prediction)
        except DataError as exc:
            if not skip_nonfinite:
                raise
            result.skipped[target_file.name] = str(exc)
            continue
        result.add(target_file.name, values)
    if not result.volumes:
        if result.skipped:
            raise UserError(
                f"{target_path}: every volume was skipped as not finite; nothing to score"
            )
        raise UserError(
            f"{target_path}: no target volume matches the acquisition/acceleration filter"
        )
    return result


_SKIP_FIX = "repair or remove it, or pass --skip-nonfinite to leave it out"


def prediction_file(folder: Path, name: str, result: EvaluationResult) -> Path:
    """``folder/name``, or ``folder/NAME_v2.h5`` (recorded in ``result.matched_v2``)."""
    plain, v2 = folder / name, folder / submission_name(name, True)
    if v2 == plain or not v2.exists():
        if not plain.is_file():
            also = "" if v2 == plain else f" (nor {v2.name})"
            raise DataError(plain, f"prediction file is missing{also}",
                            "every target volume needs one")
        return plain
    if plain.exists():
        raise DataError(
            v2, f"and {plain.name} are both there, predictions of the same target {name}",
            "keep one of them",
        )
    result.matched_v2.append(name)
    return v2


def _real(data, path: Path) -> np.ndarray:
    """The dataset's values, refused when they are not real numbers."""
    if data.dtype.kind == "c":
        raise DataError(
            path, f"'{data.name.lstrip('/')}' is complex ({data.dtype})",
            "write the magnitude image (abs) as float32",
        )
    if data.dtype.kind not in "fiu":
        raise DataError(path, f"'{data.name.lstrip('/')}' has dtype {data.dtype}, not a real "
                        "number type", "write float32 images")
    return data[()]


def _target_problem(target: np.ndarray, key: str) -> Optional[str]:
    if not np.isfinite(target).all():
        return f"'{key}' contains NaN or Inf values"
    if not target.any():
        return f"'{key}' is all zero, so PSNR and NMSE are undefined"
    return None


def _check_metrics(values: Mapping[str, float], prediction: Path) -> None:
    for name, value in values.items():
        if not np.isfinite(np.squeeze(value)):
            why = " (the prediction equals the target)" if not values.get("MSE", 1) else ""
            raise DataError(prediction, f"{name} is {float(np.squeeze(value))}{why}",
                            "a non-finite score cannot be averaged; pass --skip-nonfinite "
                            "to leave the volume out")


def read_reconstruction(path: Path, target_shape: tuple) -> np.ndarray:
    """Read a prediction's ``reconstruction`` and check it can be scored against the target."""
    if not path.is_file():
        raise DataError(path, "prediction file is missing", "every target volume needs one")
    with open_h5(path) as hf:
        recons = _real(require_dataset(
            hf, "reconstruction", path, (3,), "predictions hold a (slices, H, W) 'reconstruction'"
        ), path)
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


#: The metrics a summary shows, in the order the README explains them: which way is better,
#: and the digits that tell two runs apart.
SUMMARY_METRICS = {"NMSE": ("lower", ".4f"), "PSNR": ("dB, higher", ".2f"),
                   "SSIM": ("higher", ".4f"), "BANDING": ("dB, 0 best", ".2f")}


def format_comparison(rows: Mapping[str, Mapping[str, float]]) -> str:
    """One row of mean ``SUMMARY_METRICS`` per named result (a model, its zero-filled input),
    under a header that says which way each metric is better."""
    width = max(len(name) for name in rows)
    header = [" " * width] + [f"{m:>12}" for m in SUMMARY_METRICS]
    better = [" " * width] + [f"{'(' + b + ')':>12}" for b, _ in SUMMARY_METRICS.values()]
    lines = ["  ".join(header), "  ".join(better)]
    for name, means in rows.items():
        lines.append("  ".join([f"{name:<{width}}"] + [
            f"{means[m]:>12{digits}}" for m, (_, digits) in SUMMARY_METRICS.items()]))
    return "\n".join(lines)


def write_result(result: EvaluationResult, path: os.PathLike, **context) -> None:
    """The results as strict JSON (every value finite: ``evaluate_folder`` makes sure)."""
    write_json(path, {**context, **result.to_json()})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target-path", type=Path, required=True, help="ground-truth folder")
    parser.add_argument(
        "--predictions-path", type=Path, required=True, help="folder of reconstructions"
    )
    parser.add_argument("--challenge", choices=CHALLENGES, required=True,
                        help="which target to score against: reconstruction_esc (singlecoil) "
                        "or reconstruction_rss (multicoil)")
    parser.add_argument("--acceleration", type=int, default=None,
                        help="score only the volumes masked at this acceleration (default: "
                        "all)")
    parser.add_argument("--acquisition", choices=ACQUISITIONS, default=None,
                        help="score only the volumes of this acquisition (default: all)")
    parser.add_argument(
        "--output", type=Path, default=None,
        help="JSON file for the results (default: <predictions-path>_metrics.json beside the "
        "folder, so the submission folder holds only reconstructions)",
    )
    parser.add_argument(
        "--skip-nonfinite", action="store_true",
        help="leave out (and list) volumes whose target is not finite or all zero, or whose "
        "metrics are not finite, instead of stopping",
    )


def score_folder(
    target_path: Path,
    predictions_path: Path,
    challenge: str,
    acceleration: Optional[int] = None,
    acquisition: Optional[str] = None,
    skip_nonfinite: bool = False,
) -> EvaluationResult:
    """``evaluate_folder`` plus the BANDING column: what ``evaluate`` and the demo report."""
    return evaluate_folder(target_path, predictions_path, challenge, acceleration, acquisition,
                           extra_metrics={"BANDING": banding_score},
                           skip_nonfinite=skip_nonfinite)


def metrics_path(predictions_path: Path) -> Path:
    """``<predictions-path>_metrics.json`` beside the predictions folder (``.`` included)."""
    folder = Path(predictions_path).resolve()
    if not folder.name:
        raise UserError(f"--predictions-path {predictions_path}: name the JSON file with --output")
    return folder.with_name(folder.name + "_metrics.json")


def run(args: argparse.Namespace) -> int:
    output = args.output or metrics_path(args.predictions_path)
    refuse_overlap({"--output": output}, {"--target-path": args.target_path,
                                          "--predictions-path": args.predictions_path})
    if output.is_dir():
        raise UserError(f"{output}: is a folder; --output names the JSON file to write")
    result = score_folder(
        args.target_path, args.predictions_path, args.challenge, args.acceleration,
        args.acquisition, skip_nonfinite=args.skip_nonfinite,
    )
    if result.matched_v2:
        shown = ", ".join(submission_name(n, True) for n in result.matched_v2[:3])
        more = f" and {len(result.matched_v2) - 3} more" if len(result.matched_v2) > 3 else ""
        print(f"matched {len(result.matched_v2)} predictions to their targets by fastMRI's "
              f"_v2 rule (NAME_v2.h5 for NAME.h5): {shown}{more}")
    for name, why in result.skipped.items():
        print(f"skipped {name}: {why}")
    print(format_table(result))
    write_result(
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

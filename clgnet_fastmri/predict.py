"""Leaderboard submission export: ``clgnet-fastmri predict``.

Runs a trained CLGNet (or fastmri U-Net or VarNet of ``train --model``) over a test or
challenge folder (k-space already masked, no targets)
and writes one HDF5 file per volume with a float32 ``reconstruction`` of shape (slices, H, W)
at the header's reconSpace size, under the input's file names (or fastmri's ``_v2`` names),
plus a zip of exactly those files to upload. The whole submission (volumes and zip) is
written into a hidden staging folder beside the output, checked against the input folder,
and only then swapped into place: an error, Ctrl-C or a full disk leaves no new file under a
final name and any previous submission (``--overwrite``) and its zip as they were.
"""

from __future__ import annotations

import argparse
import logging
import os
import xml.etree.ElementTree as etree
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from fastmri.data.mri_data import et_query
from fastmri.data.subsample import MaskFunc, create_mask_for_mask_type
from fastmri.data.transforms import VarNetSample, center_crop
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoints import check_finite_weights, load_recorded
from .data.checks import (
    TARGET_KEYS,
    list_volumes,
    open_h5,
    submission_name,
    target_folder,
)
from .data.mri_data import CheckedSliceDataset
from .data.transforms import CLGNetDataTransform
from .errors import DataError, UserError
from .figures import collect_slices, save_figure
from .files import (
    atomic_output,
    recover_swaps,
    refuse_overlap,
    staged_swap,
    write_volume,
)
from .pl_modules.bridge import check_pooling
from .pl_modules.kinds import KINDS, ModelKind

log = logging.getLogger(__name__)


def reconstruct(
    model: nn.Module,
    dataset: CheckedSliceDataset,
    batch_size: int = 1,
    num_workers: int = 0,
    device: str = "cpu",
    autocast_dtype: Optional[torch.dtype] = None,
    progress: bool = True,
) -> Iterator[Tuple[str, np.ndarray]]:
    """Yield ``(file name, volume)`` for each volume of ``dataset``, as soon as it is complete.

    The dataset lists each file's slices in order, one file after another, so a volume is
    complete when the file name changes; only one volume is held in memory.
    """
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    model = model.to(device).eval()
    current, slices = None, {}
    with torch.inference_mode():
        for batch in tqdm(loader, desc="reconstructing", unit="batch", disable=not progress):
            with torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype,
                                enabled=autocast_dtype is not None):
                output = forward_batch(model, batch, device)
            for fname, slice_num, image_out in zip(batch.fname, batch.slice_num, output):
                if fname != current and current is not None:
                    yield current, _stack(slices)
                    slices = {}
                current = fname
                slices[int(slice_num)] = image_out.numpy()
    if current is not None:
        yield current, _stack(slices)


def forward_batch(model: nn.Module, batch: Union[tuple, VarNetSample], device: str
                  ) -> Union[Tensor, Sequence[Tensor]]:
    """The float32 CPU reconstructions (each H x W) of one batch.

    ``UnetSample`` (CLGNet, U-Net, or ``nn.Identity`` for the zero-filled input): the
    network's output on ``image``, denormalised. ``VarNetSample``: VarNet's output on the
    masked k-space, cropped to the header's reconSpace size as fastmri's ``VarNetModule``
    does (to the k-space width where that is narrower). Inputs take the dtype of the
    network's weights, so a model converted to bfloat16/float16 runs as it is.
    """
    check_pooling(model, batch)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if isinstance(batch, VarNetSample):
        output = model(batch.masked_kspace.to(device, dtype), batch.mask.to(device),
                       batch.num_low_frequencies.to(device)).float().cpu()
        crops = []
        for index, image in enumerate(output):
            size = (int(batch.crop_size[0][index]), int(batch.crop_size[1][index]))
            if image.shape[-1] < size[1]:  # fastmri's FLAIR 203 case
                size = (image.shape[-1], image.shape[-1])
            crops.append(center_crop(image, size))
        return crops
    output = model(batch.image.to(device, dtype).unsqueeze(1)).squeeze(1).float().cpu()
    return output * batch.std[:, None, None] + batch.mean[:, None, None]


def load_for_prediction(checkpoint: Path, challenge: str,
                        allow_challenge_mismatch: bool = False) -> Tuple[ModelKind, nn.Module]:
    """The model kind and network (eval mode, CPU) of a checkpoint, for ``challenge`` data.

    A checkpoint that records another challenge is refused unless
    ``allow_challenge_mismatch``; one without a record (an older CLGNet) is taken as is.
    """
    module, record = load_recorded(checkpoint)
    kind = KINDS[record["model_kind"]]
    if challenge not in kind.challenges:
        raise UserError(f"{checkpoint}: a {kind.title} checkpoint needs "
                        f"{' or '.join(kind.challenges)} data, not {challenge}; pass --challenge "
                        f"{kind.challenges[0]}")
    trained = record["challenge"]
    if trained is not None and trained != challenge and not allow_challenge_mismatch:
        raise UserError(f"{checkpoint}: trained on {trained} data, asked for {challenge}; pass "
                        f"--challenge {trained}, or --allow_challenge_mismatch to run it anyway")
    return kind, getattr(module, kind.network).eval()


def prediction_datasets(kind: ModelKind, data_path: Path, challenge: str,
                        mask_func: Optional[MaskFunc]
                        ) -> Tuple[CheckedSliceDataset, CheckedSliceDataset]:
    """The dataset the network reads and the one the figure reads (the zero-filled image
    input; the same dataset unless the network reads k-space)."""
    dataset = CheckedSliceDataset(
        data_path, challenge, transform=kind.transform(challenge, mask_func, use_seed=True)
    )
    if isinstance(dataset.transform, CLGNetDataTransform):
        return dataset, dataset
    images = CLGNetDataTransform(challenge, mask_func, use_seed=True)
    return dataset, CheckedSliceDataset(data_path, challenge, transform=images)


def _stack(slices: Dict[int, np.ndarray]) -> np.ndarray:
    return np.stack([slices[k] for k in sorted(slices)]).astype(np.float32)


def expected_shape(path: Path, challenge: str) -> Tuple[int, int, int]:
    """(slices, H, W) that a reconstruction of input ``path`` must have.

    H x W is the header's reconSpace size, except where the k-space is narrower than that
    (some fastMRI brain FLAIR volumes), where fastmri's transforms crop to a square of the
    k-space width; CLGNetDataTransform does the same.
    """
    with open_h5(path) as hf:
        kspace_shape = hf["kspace"].shape
        root = etree.fromstring(hf["ismrmrd_header"][()])
    rec = ["encoding", "reconSpace", "matrixSize"]
    size = (int(et_query(root, rec + ["x"])), int(et_query(root, rec + ["y"])))
    cols = kspace_shape[-1]
    if cols < size[1]:
        size = (cols, cols)
    return (kspace_shape[0], *size)


def check_submission(
    output: Path, data_path: Path, challenge: str, v2_names: bool
) -> List[str]:
    """Check the submission in ``output`` against every volume of ``data_path``.

    Returns the submission's file names; raises a DataError naming the first file that is
    missing, misshapen, of the wrong type or not finite.
    """
    names = []
    for source in list_volumes(data_path, "input"):
        name = submission_name(source.name, v2_names)
        target = output / name
        shape = expected_shape(source, challenge)
        if not target.is_file():
            raise DataError(target, f"missing from the submission (input {source.name})")
        with open_h5(target) as hf:
            if "reconstruction" not in hf:
                raise DataError(target, "has no 'reconstruction' dataset")
            recons = hf["reconstruction"]
            if recons.shape != shape:
                raise DataError(
                    target, f"reconstruction has shape {recons.shape}, expected {shape}"
                )
            if recons.dtype != np.float32:
                raise DataError(
                    target, f"reconstruction has dtype {recons.dtype}, expected float32"
                )
            if not np.isfinite(recons[()]).all():
                raise DataError(target, "reconstruction contains NaN or Inf values")
        names.append(name)
    return names


def write_zip(path: Path, folder: Path, names: List[str], shown: Optional[Path] = None) -> None:
    """A zip of exactly ``names`` from ``folder``, flat (no directories inside).

    Verified before it is renamed into place: its directory (at the end of the file) lists
    exactly ``names`` with their sizes, so the write reached the end.
    """
    sizes = {name: (folder / name).stat().st_size for name in names}

    def check(tmp: Path) -> None:
        try:
            with zipfile.ZipFile(tmp) as archive:
                found = {info.filename: info.file_size for info in archive.infolist()}
        except (zipfile.BadZipFile, OSError):
            found = None
        if found != sizes:
            raise UserError(
                f"{shown or path}: the zip written does not read back as written; "
                "check the disk and run again"
            )

    with atomic_output(path, check, shown) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in names:
                archive.write(folder / name, arcname=name)


@dataclass
class Submission:
    names: List[str]
    zip_path: Optional[Path]
    figure: Optional[Path]


def predict(
    checkpoint: Path,
    data_path: Path,
    output: Path,
    challenge: str = "singlecoil",
    mask_func: Optional[MaskFunc] = None,
    v2_names: bool = False,
    make_zip: bool = True,
    figure: Optional[Path] = None,
    target_path: Optional[Path] = None,
    overwrite: bool = False,
    batch_size: int = 1,
    num_workers: int = 0,
    device: str = "cpu",
    autocast_dtype: Optional[torch.dtype] = None,
    progress: bool = True,
    model_dtype: Optional[torch.dtype] = None,
    allow_challenge_mismatch: bool = False,
) -> Submission:
    """Reconstruct every volume of ``data_path`` into ``output`` and check the result.

    ``mask_func`` undersamples fully-sampled input (e.g. a val folder) with a per-volume
    seeded mask; leave it None for test/challenge folders, whose k-space is already masked.
    ``model_dtype`` converts the network (pure bfloat16/float16), ``autocast_dtype`` runs it
    under autocast instead.
    """
    output = check_output_name(output)
    zip_path = zip_path_of(output) if make_zip else None
    check_outputs(output, zip_path, figure, overwrite,
                  {"--data_path": data_path, "--target_path": target_path,
                   "--checkpoint": checkpoint})
    kind, model = load_for_prediction(checkpoint, challenge, allow_challenge_mismatch)
    if model_dtype is not None and kind.name == "varnet":
        raise UserError(f"{checkpoint}: fastmri's VarNet runs its FFTs in the weights' dtype, "
                        "which cannot be bfloat16/float16; use --precision bf16-mixed")
    check_finite_weights(model.state_dict(), checkpoint)
    if model_dtype is not None:
        model = model.to(model_dtype)
    dataset, image_dataset = prediction_datasets(kind, data_path, challenge, mask_func)
    # Found (and its entries checked) before anything is written: a bad target folder must
    # not fail the figure after the submission was swapped in.
    targets = target_folder(data_path, challenge, target_path)
    # The folder and its zip are swapped in together.
    swapped = [output.name] + ([zip_path.name] if zip_path else [])
    with staged_swap(output.parent, swapped, staging_prefix(output), output) as staging:
        folder = staging / output.name
        folder.mkdir()
        for fname, volume in reconstruct(
            model, dataset, batch_size, num_workers, device, autocast_dtype, progress
        ):
            name = submission_name(fname, v2_names)
            if not np.isfinite(volume).all():
                raise DataError(
                    Path(data_path) / fname,
                    "the reconstruction holds NaN or Inf values",
                    f"is the checkpoint {checkpoint} broken?",
                )
            write_volume(folder / name, volume, shown=output / name)
        names = check_submission(folder, data_path, challenge, v2_names)
        if zip_path:
            write_zip(staging / zip_path.name, folder, names, shown=zip_path)
    if figure is None or targets is None:
        figure = None
    else:
        views = collect_slices(
            image_dataset, output, targets, TARGET_KEYS[challenge],
            recon_name=lambda name: submission_name(name, v2_names),
        )
        save_figure(views, figure, kind.title)
    return Submission(names, zip_path, figure)


#: ``--precision`` -> (autocast dtype, dtype the network is converted to).
PRECISIONS = {
    "32": (None, None),
    "bf16": (torch.bfloat16, None),
    "bf16-mixed": (torch.bfloat16, None),
    "16-mixed": (torch.float16, None),
    "bf16-true": (None, torch.bfloat16),
    "16-true": (None, torch.float16),
}


def zip_path_of(output: Path) -> Path:
    return output.with_name(output.name + ".zip")


def staging_prefix(output: Path) -> str:
    """Name prefix of ``predict``'s hidden staging folders beside ``output``."""
    return f".{output.name}.staging."


def check_output_name(output: Path) -> Path:
    """``output`` if it names a folder of its own (not ``.``, ``..`` or ``/``)."""
    if Path(output).name in ("", ".", ".."):
        raise UserError(
            f"--output {output}: give the submission folder a name of its own (e.g. "
            "--output submission); the zip is written beside it as NAME.zip"
        )
    return Path(output)


def check_outputs(
    output: Path,
    zip_path: Optional[Path],
    figure: Optional[Path],
    overwrite: bool,
    inputs: Dict[str, Optional[Path]],
) -> None:
    """Everything about the outputs that can be refused before any work.

    No output may be, lie inside or contain an input. ``--overwrite`` replaces only a
    previous submission: a folder of ``.h5`` files (which is all ``predict`` writes there).
    """
    refuse_overlap({"--output": output, "the zip": zip_path, "--figure": figure}, inputs)
    # An export killed midway: finished if it had written everything, else undone.
    recover_swaps(output.parent, staging_prefix(output))
    if output.exists() and not output.is_dir():
        raise UserError(f"{output}: exists and is not a folder; choose another --output")
    if output.is_dir():
        entries = [p for p in output.iterdir() if not p.name.startswith(".")]
        if entries and not overwrite:
            raise UserError(f"{output}: the output folder is not empty; pass --overwrite")
        foreign = [p for p in entries if p.suffix != ".h5" or not p.is_file()]
        if foreign:
            raise UserError(
                f"{output}: holds {foreign[0].name}, which is not part of a submission; "
                "--overwrite replaces only a folder of .h5 reconstructions, choose another "
                "--output"
            )
    old_zip = zip_path_of(output)
    if old_zip.exists():
        if zip_path is None:
            raise UserError(
                f"{old_zip}: would no longer match the new submission; remove it or drop "
                "--no_zip"
            )
        if not overwrite:
            raise UserError(f"{old_zip}: exists; pass --overwrite")
        if not old_zip.is_file():
            raise UserError(f"{old_zip}: exists and is not a file; move it or pass --no_zip")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"{output}: cannot create the output folder ({exc.strerror}); "
            "choose a folder you can write to"
        ) from None
    if not os.access(output.parent, os.W_OK | os.X_OK):
        raise UserError(f"{output}: cannot write in {output.parent}; choose a folder you can "
                        "write to")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a .ckpt of clgnet-fastmri train")
    parser.add_argument("--data_path", type=Path, required=True,
                        help="folder of fastMRI files to reconstruct (test/challenge split)")
    parser.add_argument("--output", type=Path, required=True,
                        help="submission folder; the zip is written beside it as <output>.zip")
    parser.add_argument("--challenge", choices=("singlecoil", "multicoil"), default="singlecoil",
                        help="which fastMRI files --data_path holds (multicoil: coil k-space)")
    parser.add_argument("--v2_names", action="store_true",
                        help="name files file1000_v2.h5 (the public knee leaderboard)")
    parser.add_argument("--no_zip", action="store_true",
                        help="write the submission folder only, no <output>.zip")
    parser.add_argument("--figure", type=Path, default=None,
                        help="PNG of a few slices when ground truth is found "
                        "(default: <output>_figure.png)")
    parser.add_argument("--target_path", type=Path, default=None,
                        help="ground truth for the figure (default: the input itself, or "
                        "<data_path>_gt)")
    parser.add_argument("--mask_type", default="random",
                        help="mask for undersampling fully-sampled input (with "
                        "--accelerations)")
    parser.add_argument("--center_fractions", nargs="+", type=float, default=None,
                        help="undersample fully-sampled input (with --accelerations)")
    parser.add_argument("--accelerations", nargs="+", type=int, default=None,
                        help="undersample fully-sampled input at these factors (with "
                        "--center_fractions)")
    parser.add_argument("--batch_size", type=int, default=1, help="slices per forward pass")
    parser.add_argument("--num_workers", type=int, default=0,
                        help="data-loading processes; 0 loads in the main one")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: cuda when there is a GPU, else "
                        "cpu)")
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="32",
                        help="bf16 (= bf16-mixed) or 16-mixed: autocast for the convolutions; "
                        "bf16-true or 16-true: the network converted (CLGNet's FFTs stay "
                        "float32)")
    parser.add_argument("--allow_challenge_mismatch", action="store_true",
                        help="run a checkpoint trained for the other challenge")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a previous submission in --output (a folder of .h5 "
                        "files only) once the new one is complete and checked")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    check_output_name(args.output)
    mask_func = None
    if args.accelerations or args.center_fractions:
        if not (args.accelerations and args.center_fractions):
            raise UserError("give --center_fractions and --accelerations together")
        mask_func = create_mask_for_mask_type(
            args.mask_type, args.center_fractions, args.accelerations
        )
    figure = args.figure or args.output.with_name(args.output.name + "_figure.png")
    submission = predict(
        args.checkpoint,
        args.data_path,
        args.output,
        challenge=args.challenge,
        mask_func=mask_func,
        v2_names=args.v2_names,
        make_zip=not args.no_zip,
        figure=figure,
        target_path=args.target_path,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        autocast_dtype=PRECISIONS[args.precision][0],
        progress=not args.quiet,
        model_dtype=PRECISIONS[args.precision][1],
        allow_challenge_mismatch=args.allow_challenge_mismatch,
    )
    print(
        f"submission of {len(submission.names)} volumes in {args.output}, "
        f"checked against {args.data_path}"
    )
    if submission.zip_path:
        print(f"zip to upload: {submission.zip_path}")
    if submission.figure:
        print(f"figure: {submission.figure}")
    return 0

"""Leaderboard submission export: ``clgnet-fastmri predict``.

Runs a trained CLGNet (or fastmri U-Net or VarNet of ``train --model``) over a test or
challenge folder (k-space already masked, no targets)
and writes one HDF5 file per volume with a float32 ``reconstruction`` of shape (slices, H, W)
at the header's reconSpace size, under the input's file names (or fastmri's ``_v2`` names),
plus a zip of exactly those files to upload. The whole submission (volumes and zip) is
written into a hidden staging folder beside the output, checked against the input folder,
and only then swapped into place: an error, Ctrl-C or a full disk leaves no new file under a
final name and any previous submission (``--overwrite``) and its zip as they were.

The checkpoint's Lightning module runs under ``Trainer.predict`` (its ``predict_step``, the
device and precision asked for); each volume is written as soon as its last slice is
predicted, so one volume at a time is held in memory.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import xml.etree.ElementTree as etree
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import pytorch_lightning as pl
import torch
from fastmri.data.mri_data import et_query
from fastmri.data.subsample import MaskFunc, create_mask_for_mask_type
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import move_data_to_device
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoints import check_finite_weights, load_recorded
from .data.checks import (
    list_volumes,
    open_h5,
    submission_name,
    target_folder,
)
from .data.fastmri_layout import CHALLENGES, TARGET_KEYS
from .data.mri_data import CheckedSliceDataset
from .data.transforms import CLGNetDataTransform
from .errors import DataError, UserError
from .figures import collect_slices, save_figure
from .files import (
    atomic_output,
    recover_swaps,
    refuse_overlap,
    staged_swap,
    writable,
    write_volume,
)
from .pl_modules.bridge import SlicePredictions, check_pooling, predict_images
from .pl_modules.kinds import KINDS, ModelKind
from .quiet import quiet_lightning
from .settings import TRUE_PRECISIONS

log = logging.getLogger(__name__)

#: ``(file name, slices x H x W float32 volume)``.
Volume = Tuple[str, np.ndarray]


class VolumeAssembler:
    """Stacks the slices of ``predict_step`` outputs into volumes, one volume at a time.

    A dataset lists each file's slices in order, one file after another, and the loader does
    not shuffle, so a volume is complete when the file name changes.
    """

    def __init__(self) -> None:
        self.fname: Optional[str] = None
        self.slices: Dict[int, np.ndarray] = {}

    def add(self, prediction: SlicePredictions) -> List[Volume]:
        """Take one batch's slices (on any device); return the volumes they completed."""
        done = []
        for fname, slice_num, image in zip(*prediction):
            if fname != self.fname:
                done.extend(self.finish())
                self.fname = fname
            self.slices[int(slice_num)] = image.cpu().numpy()
        return done

    def finish(self) -> List[Volume]:
        """The volume of the last slices taken, if any (at the end of the data)."""
        if self.fname is None:
            return []
        volume = np.stack([self.slices[k] for k in sorted(self.slices)]).astype(np.float32)
        done = [(self.fname, volume)]
        self.fname, self.slices = None, {}
        return done


class VolumeWriter(Callback):
    """Hands each volume of a ``Trainer.predict`` run to ``write(file name, volume)`` as soon
    as its last slice is predicted, so that only one volume is held in memory (the run keeps
    no predictions: ``return_predictions=False``)."""

    def __init__(self, write: Callable[[str, np.ndarray], None]):
        self.write = write
        self.volumes = VolumeAssembler()

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             outputs: SlicePredictions, batch: object, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        for fname, volume in self.volumes.add(outputs):
            self.write(fname, volume)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for fname, volume in self.volumes.finish():
            self.write(fname, volume)


def predict_volumes(
    module: pl.LightningModule,
    dataset: CheckedSliceDataset,
    write: Callable[[str, np.ndarray], None],
    batch_size: int = 1,
    num_workers: int = 0,
    device: str = "cpu",
    precision: str = "32",
    progress: bool = True,
) -> None:
    """Run ``module.predict_step`` over ``dataset`` with ``Trainer.predict`` and call
    ``write(file name, volume)`` for each volume as soon as it is complete.

    ``device`` is a torch device string (cpu, cuda, cuda:N, mps), ``precision`` a key of
    ``PRECISIONS``. An exception in ``write`` (or Ctrl-C) stops the run and propagates.
    """
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    accelerator, devices = lightning_devices(device)
    with quiet_lightning(info=False):
        trainer = pl.Trainer(
            accelerator=accelerator, devices=devices, precision=PRECISIONS[precision],
            logger=False, enable_checkpointing=False, enable_model_summary=False,
            enable_progress_bar=progress, callbacks=[VolumeWriter(write)],
        )
        with interrupts_raised():
            trainer.predict(module, dataloaders=loader, return_predictions=False)


def lightning_devices(device: str) -> Tuple[str, Union[int, List[int]]]:
    """Lightning's ``(accelerator, devices)`` for one torch device (cpu, cuda, cuda:N, mps)."""
    parsed = torch.device(device)
    if parsed.type == "cuda":
        return "gpu", [parsed.index or 0]
    return parsed.type, 1


@contextlib.contextmanager
def interrupts_raised() -> Iterator[None]:
    """Ctrl-C in a ``Trainer`` call raises ``KeyboardInterrupt``, as anywhere else.

    Lightning answers it with ``sys.exit(1)`` and ignores SIGINT from then on (a graceful
    stop for training); predict's staging and the command's message need the interrupt
    itself, and the process its Ctrl-C.
    """
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    except SystemExit as exc:
        # Lightning calls sys.exit inside its ``except KeyboardInterrupt``.
        if not isinstance(exc.__context__, KeyboardInterrupt):
            raise
        signal.signal(signal.SIGINT, handler)
        raise exc.__context__ from None


def reconstruct(
    model: nn.Module,
    dataset: CheckedSliceDataset,
    batch_size: int = 1,
    num_workers: int = 0,
    device: str = "cpu",
    autocast_dtype: Optional[torch.dtype] = None,
    progress: bool = True,
) -> Iterator[Volume]:
    """Yield ``(file name, volume)`` for each volume of ``dataset`` (``UnetSample``s) as soon
    as it is complete, reconstructed by a plain float32 image network (``B x 1 x H x W`` in
    and out; ``nn.Identity()`` gives the zero-filled input); one volume is held in memory.

    For networks outside a Lightning module, e.g. the zero-filled baseline of ``train --mode
    test``; a checkpoint goes through ``predict_volumes``. Both compute the slices with
    ``predict_images``, so their numbers agree.
    """
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    model = model.to(device).eval()

    def network(image: torch.Tensor) -> torch.Tensor:
        return model(image.unsqueeze(1)).squeeze(1)

    volumes = VolumeAssembler()
    for batch in tqdm(loader, desc="reconstructing", unit="batch", disable=not progress):
        check_pooling(model, batch)
        # Yielded outside these modes: a generator must not leave them on in its caller.
        with torch.inference_mode(), torch.autocast(
            device_type=torch.device(device).type, dtype=autocast_dtype,
            enabled=autocast_dtype is not None,
        ):
            prediction = predict_images(network, move_data_to_device(batch, device))
        yield from volumes.add(prediction)
    yield from volumes.finish()


def load_for_prediction(checkpoint: Path, challenge: str,
                        allow_challenge_mismatch: bool = False
                        ) -> Tuple[ModelKind, pl.LightningModule]:
    """The model kind and Lightning module (on the CPU) of a checkpoint, for ``challenge``
    data.

    A checkpoint that records another challenge is refused unless
    ``allow_challenge_mismatch``; one without a record (an older CLGNet) is taken as is.
    """
    module, record = load_recorded(checkpoint)
    kind = KINDS[record["model_kind"]]
    problem = kind.challenge_problem(challenge)
    if problem is not None:
        raise UserError(f"{checkpoint}: a {kind.title} checkpoint; {problem}, not {challenge}; "
                        f"pass --challenge {kind.challenges[0]}")
    trained = record["challenge"]
    if trained is not None and trained != challenge and not allow_challenge_mismatch:
        raise UserError(f"{checkpoint}: trained on {trained} data, asked for {challenge}; pass "
                        f"--challenge {trained}, or --allow_challenge_mismatch to run it anyway")
    return kind, module


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
    precision: str = "32",
    progress: bool = True,
    allow_challenge_mismatch: bool = False,
) -> Submission:
    """Reconstruct every volume of ``data_path`` into ``output`` and check the result.

    ``mask_func`` undersamples fully-sampled input (e.g. a val folder) with a per-volume
    seeded mask; leave it None for test/challenge folders, whose k-space is already masked.
    ``device`` is cpu, cuda, cuda:N or mps; ``precision`` a key of ``PRECISIONS``.
    """
    output = check_output_name(output)
    zip_path = zip_path_of(output) if make_zip else None
    check_outputs(output, zip_path, figure, overwrite,
                  {"--data_path": data_path, "--target_path": target_path,
                   "--checkpoint": checkpoint})
    kind, module = load_for_prediction(checkpoint, challenge, allow_challenge_mismatch)
    if PRECISIONS[precision] in TRUE_PRECISIONS and kind.no_true_precision:
        raise UserError(f"{checkpoint}: {kind.no_true_precision}; use --precision bf16-mixed")
    check_finite_weights(module.state_dict(), checkpoint)
    dataset, image_dataset = prediction_datasets(kind, data_path, challenge, mask_func)
    # Found (and its entries checked) before anything is written: a bad target folder must
    # not fail the figure after the submission was swapped in.
    targets = target_folder(data_path, challenge, target_path)
    # The folder and its zip are swapped in together.
    swapped = [output.name] + ([zip_path.name] if zip_path else [])
    with staged_swap(output.parent, swapped, staging_prefix(output), output) as staging:
        folder = staging / output.name
        folder.mkdir()

        def write(fname: str, volume: np.ndarray) -> None:
            name = submission_name(fname, v2_names)
            if not np.isfinite(volume).all():
                raise DataError(
                    Path(data_path) / fname,
                    "the reconstruction holds NaN or Inf values",
                    f"is the checkpoint {checkpoint} broken?",
                )
            write_volume(folder / name, volume, shown=output / name)

        predict_volumes(module, dataset, write, batch_size, num_workers, device, precision,
                        progress)
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


#: ``--precision`` -> Lightning's precision: ``*-mixed`` runs the network under autocast,
#: ``*-true`` converts it (and its inputs) to bfloat16/float16.
PRECISIONS = {
    "32": "32-true",
    "bf16": "bf16-mixed",
    "bf16-mixed": "bf16-mixed",
    "16-mixed": "16-mixed",
    "bf16-true": "bf16-true",
    "16-true": "16-true",
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
    if not writable(output.parent):
        raise UserError(f"{output}: cannot write in {output.parent}; choose a folder you can "
                        "write to")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a .ckpt of clgnet-fastmri train")
    parser.add_argument("--data_path", type=Path, required=True,
                        help="folder of fastMRI files to reconstruct (test/challenge split)")
    parser.add_argument("--output", type=Path, required=True,
                        help="submission folder; the zip is written beside it as <output>.zip")
    parser.add_argument("--challenge", choices=CHALLENGES, default="singlecoil",
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
        precision=args.precision,
        progress=not args.quiet,
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

"""Pictures of reconstructions: ground truth, zero-filled input, the model's output (CLGNet,
U-Net or VarNet) and their errors."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from fastmri.data.subsample import temp_seed
from fastmri.evaluate import psnr, ssim

from .data.checks import open_h5
from .data.mri_data import CheckedSliceDataset
from .files import write_png

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@dataclass
class SliceView:
    """One slice to show; images are (H, W) in the target's intensity units."""

    name: str
    target: np.ndarray
    zero_filled: np.ndarray
    reconstruction: np.ndarray
    maxval: float  # peak for PSNR/SSIM: the target volume's maximum, as fastmri.evaluate uses
    acceleration: Optional[int] = None  # of the mask that made ``zero_filled``, if known

    def scores(self, image: np.ndarray) -> str:
        value_psnr = psnr(self.target, image, maxval=self.maxval)
        value_ssim = float(np.squeeze(ssim(self.target[None], image[None], maxval=self.maxval)))
        return f"PSNR {value_psnr:.2f} dB, SSIM {value_ssim:.4f}"


def collect_slices(
    dataset: CheckedSliceDataset,
    recon_dir: os.PathLike,
    target_dir: os.PathLike,
    recons_key: str,
    num_volumes: int = 3,
    recon_name: Callable[[str], str] = lambda name: name,
) -> List[SliceView]:
    """The middle slice of the first ``num_volumes`` volumes of ``dataset``.

    ``dataset`` must be the one (with its transform, and so its mask) that produced the
    reconstructions in ``recon_dir``: its ``UnetSample.image`` denormalised is the zero-filled
    input the model saw. Targets are read from ``target_dir`` (files of the same names), the
    reconstruction of input ``name`` from ``recon_dir / recon_name(name)``.
    """
    first_index = {}
    counts: dict = {}
    for index, sample in enumerate(dataset.raw_samples):
        first_index.setdefault(sample.fname, index)
        counts[sample.fname] = counts.get(sample.fname, 0) + 1
    views = []
    for fname in sorted(first_index)[:num_volumes]:
        middle = counts[fname] // 2
        sample = dataset[first_index[fname] + middle]
        slice_num = int(sample.slice_num)
        zero_filled = (sample.image * sample.std + sample.mean).numpy()
        with open_h5(Path(target_dir) / fname.name) as hf:
            target_volume = hf[recons_key][()]
        with open_h5(Path(recon_dir) / recon_name(fname.name)) as hf:
            reconstruction = hf["reconstruction"][slice_num]
        metadata = dataset.raw_samples[first_index[fname]].metadata
        views.append(
            SliceView(
                name=f"{fname.name} slice {slice_num}",
                target=target_volume[slice_num],
                zero_filled=zero_filled,
                reconstruction=reconstruction,
                maxval=float(target_volume.max()),
                acceleration=acceleration_of(metadata, dataset.transform, fname.name),
            )
        )
    return views


def acceleration_of(attrs: Mapping[str, Any], transform: Any, fname: str) -> Optional[int]:
    """The acceleration a volume's input was undersampled at: a test file's own (its
    ``acceleration`` attribute), else the one the transform's mask function draws for the file
    (fastmri seeds it with the file name, so each volume keeps one draw)."""
    if "acceleration" in attrs:
        return int(attrs["acceleration"])
    mask_func = getattr(transform, "mask_func", None)
    if mask_func is None:
        return None
    with temp_seed(mask_func.rng, tuple(map(ord, fname))):
        return int(mask_func.choose_acceleration()[1])


def figure_title(views: Sequence[SliceView], model_name: str) -> str:
    """``CLGNet against its zero-filled input, 4x undersampling``: what the figure compares."""
    found = sorted({v.acceleration for v in views if v.acceleration is not None})
    accelerations = "/".join(f"{a}x" for a in found)
    title = f"{model_name} against its zero-filled input"
    return f"{title}, {accelerations} undersampling" if found else title


def build_figure(views: Sequence[SliceView], model_name: str = "CLGNet"
                 ) -> Tuple["Figure", List[str]]:
    """The figure of ``save_figure`` and its panel titles, row by row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 5
    # Constrained layout reserves each title's height, so no title runs into the row above.
    fig, axes = plt.subplots(
        len(views), columns, figsize=(3.4 * columns, 3.6 * len(views) + 0.6), squeeze=False,
        layout="constrained",
    )
    fig.suptitle(figure_title(views, model_name))
    titles = []
    for row, view in zip(axes, views):
        titles += _draw_row(fig, row, view, model_name)
    return fig, titles


def _draw_row(fig: "Figure", row: Sequence["Axes"], view: SliceView, model_name: str
              ) -> List[str]:
    error_zf = np.abs(view.zero_filled - view.target)
    error_model = np.abs(view.reconstruction - view.target)
    # One scale for both error maps (the input's largest error), so they compare directly.
    error_max = max(float(error_zf.max()), 1e-12)
    acceleration = "" if view.acceleration is None else f", {view.acceleration}x"
    panels = [
        (view.target, f"ground truth\n{view.name}", view.maxval),
        (view.zero_filled, f"zero-filled{acceleration}\n{view.scores(view.zero_filled)}",
         view.maxval),
        (view.reconstruction, f"{model_name}\n{view.scores(view.reconstruction)}",
         view.maxval),
        (error_zf, "|zero-filled - truth|", error_max),
        (error_model, f"|{model_name} - truth|", error_max),
    ]
    for ax, (image, title, vmax) in zip(row, panels):
        shown = ax.imshow(image, cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    colorbar = fig.colorbar(shown, ax=list(row[3:]), shrink=0.8)
    colorbar.set_label("|error| in image units, one scale for both maps", fontsize=8)
    colorbar.ax.tick_params(labelsize=7)
    return [title for _, title, _ in panels]


def save_figure(
    views: Sequence[SliceView], path: os.PathLike, model_name: str = "CLGNet"
) -> List[str]:
    """Write a PNG with one row per slice; returns the panel titles, row by row.

    Columns: ground truth, zero-filled input, reconstruction (PSNR/SSIM against the ground
    truth in the titles), and the absolute errors of both, on one shared scale with its colour
    bar; the title names the model and the acceleration.
    """
    import matplotlib.pyplot as plt

    fig, titles = build_figure(views, model_name)
    try:
        write_png(path, fig, FIGURE_DPI)
    finally:
        plt.close(fig)
    return titles


#: Pixels per inch of the PNG: titles at 9 points stay legible at 100.
FIGURE_DPI = 100

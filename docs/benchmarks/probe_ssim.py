"""Where a reconstruction's SSIM is won or lost: inside the anatomy or in the background.

Issue 29 (BENCHMARKS.md, *256 x 256, seventh session*). For each ``KIND=CHECKPOINT`` given (a
``bench curves`` run's ``last.ckpt``; ``KIND`` is ``clgnet`` or ``unet``), on the validation
split of the built-in 256 x 256 set of ``--anatomy`` under the masks ``bench curves`` scores
with:

- psnr, ssim: as the curves report them (fastmri's ``MriModule``: each file's ``max``
  attribute as the peak, SSIM averaged over slices, then over volumes);
- ssim fg / ssim bg: the same SSIM map (``fastmri.evaluate.ssim``'s window and constants,
  without the 3-pixel border it leaves out) averaged over the anatomy (target above 5 % of its
  volume's peak) and over the rest, the background; bg share: the background's share of the
  pixels, so ssim ~ share * bg + (1 - share) * fg;
- bg bias: the mean of output minus target over the background, over the peak. SSIM's
  luminance term punishes a mean offset where the signal is low: at a background level of
  1 % of the peak, an offset of 0.5 % costs about 8 %.

Usage (from the repository root)::

    python docs/benchmarks/probe_ssim.py --anatomy brain \\
        unet=clgnet_runs/curves256/brain/unet/last.ckpt \\
        clgnet=clgnet_runs/curves256-exp/brain/clgnet_global_init=0.0/last.ckpt
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Any, Dict, List

import numpy as np
import torch
from fastmri import evaluate
from skimage.metrics import structural_similarity

from clgnet_fastmri.bench.curves import built_in_curve_data
from clgnet_fastmri.checkpoints import module_from_checkpoint, read_checkpoint

#: Half of ``fastmri.evaluate.ssim``'s 7-pixel window: the border skimage's mean leaves out.
BORDER = 3


def reconstruct(module: torch.nn.Module, data) -> Dict[str, Dict[str, Any]]:
    """Per volume: output, target (un-normalised, slices in order) and the file's peak."""
    slices: Dict[str, Dict[str, Dict[int, np.ndarray]]] = defaultdict(lambda: defaultdict(dict))
    peaks: Dict[str, float] = {}
    with torch.no_grad():
        for index, batch in enumerate(data.val_dataloader()):
            found = module.predict_step(batch, index)
            targets = batch.target * batch.std[:, None, None] + batch.mean[:, None, None]
            for i, (fname, slice_num) in enumerate(zip(found.fname, found.slice_num.tolist())):
                slices[fname]["output"][slice_num] = found.images[i].numpy()
                slices[fname]["target"][slice_num] = targets[i].numpy()
                peaks[fname] = float(batch.max_value[i])
    return {fname: {part: np.stack([v[k] for k in sorted(v)]) for part, v in parts.items()}
            | {"peak": peaks[fname]} for fname, parts in slices.items()}


def probe(volumes: Dict[str, Dict[str, Any]]) -> Dict[str, float]:
    per_volume: Dict[str, List[float]] = defaultdict(list)
    for volume in volumes.values():
        output, target, peak = volume["output"], volume["target"], volume["peak"]
        per_volume["psnr"].append(evaluate.psnr(target, output, maxval=peak))
        per_volume["ssim"].append(evaluate.ssim(target, output, maxval=peak))
        found: Dict[str, List[float]] = defaultdict(list)
        inner = (slice(BORDER, -BORDER),) * 2
        for out, tgt in zip(output, target):
            _, ssim_map = structural_similarity(tgt, out, data_range=peak, full=True)
            anatomy = tgt > 0.05 * target.max()
            scored, inside = ssim_map[inner], anatomy[inner]
            found["ssim fg"].append(scored[inside].mean())
            found["ssim bg"].append(scored[~inside].mean())
            found["bg share"].append(1.0 - inside.mean())
            found["bg bias"].append((out - tgt)[~anatomy].mean() / peak)
        for name, values in found.items():
            per_volume[name].append(float(np.mean(values)))
    return {name: float(np.mean(values)) for name, values in per_volume.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("networks", nargs="+", metavar="KIND=CHECKPOINT",
                        help="clgnet=PATH or unet=PATH: a bench curves last.ckpt")
    parser.add_argument("--anatomy", choices=("knee", "brain"), default="brain")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = built_in_curve_data(args.anatomy, 256)
    for spec in args.networks:
        kind, _, path = spec.partition("=")
        module = module_from_checkpoint(path, read_checkpoint(path), {"model_kind": kind})
        found = probe(reconstruct(module.eval(), data))
        print(f"{args.anatomy} {spec}: " + ", ".join(f"{name} {value:.4f}"
                                                     for name, value in found.items()))


if __name__ == "__main__":
    main()

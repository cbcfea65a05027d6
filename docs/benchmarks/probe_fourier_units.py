"""What CLGNet's Fourier units do inside a network, at initialisation or in a checkpoint.

Issue 29, item 3 (BENCHMARKS.md, *256 x 256, sixth session*). For each network given (``init``:
a fresh CLGNet under ``torch.manual_seed(0)``; or a ``bench curves`` run's ``last.ckpt``), on
the built-in 256 x 256 set of ``--anatomy`` (the data ``bench curves`` trains on):

- share: per SFL, the spread of the fuse output's global half (``fuse.weight[:, C:]`` applied
  to the unit's output) over the spread of its local half (applied to the 3x3 convolution's
  output); spread = RMS over pixels after removing each channel's mean, one validation
  batch, eval mode. Median, min and max over the SFLs.
- spike: per unit, the magnitude at pixel (0, 0) of the unit's output over its spread.
- batch-stat CV: per unit and channel, the coefficient of variation of the BatchNorm input's
  batch variance over 16 training batches of 4 (train mode, no update kept), median over
  channels, then median and max over the units: how much the statistics a batch of 4 gives
  the BatchNorm move from batch to batch.

Usage (from the repository root)::

    python docs/benchmarks/probe_fourier_units.py --anatomy knee init \
        clgnet_runs/curves256/knee/clgnet/last.ckpt

``--global-module none`` probes a CLGNet_non network (the unit without its FFTs).
"""

from __future__ import annotations

import argparse
import copy
from typing import Dict, List

import torch

from clgnet_fastmri.bench.curves import built_in_curve_data
from clgnet_fastmri.checkpoints import load_clgnet
from clgnet_fastmri.models import ReferenceCLGNet, ReferenceFourierUnit, ReferenceSFL
from clgnet_fastmri.pl_modules.data_module import CLGNetDataModule


def spread(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean((2, 3), keepdim=True)).square().mean().sqrt()


def load(source: str, global_module: str) -> ReferenceCLGNet:
    """The network in its reference form, whose BatchNorm layers run as modules (hooks see
    their input); a checkpoint is read and checked by ``checkpoints.load_clgnet``."""
    torch.manual_seed(0)
    net = ReferenceCLGNet(global_module=global_module)
    if source != "init":
        net.load_state_dict(load_clgnet(source).state_dict())
    return net


def probe(net: ReferenceCLGNet, data: CLGNetDataModule) -> Dict[str, List[float]]:
    share: List[float] = []
    spike: List[float] = []

    def on_sfl(sfl: ReferenceSFL, args, out) -> None:
        x, c = args[0], sfl.local.out_channels
        weight = sfl.fuse.weight[..., 0, 0]
        unit = sfl.fourier(x)
        local = torch.einsum("oc,bchw->bohw", weight[:, :c], sfl.local(x))
        share.append((spread(torch.einsum("oc,bchw->bohw", weight[:, c:], unit))
                      / spread(local)).item())
        spike.append((unit[..., 0, 0].abs().mean() / spread(unit)).item())

    hooks = [m.register_forward_hook(on_sfl) for m in net.modules()
             if isinstance(m, ReferenceSFL)]
    with torch.no_grad():
        net.eval()(next(iter(data.val_dataloader())).image.unsqueeze(1))
    for hook in hooks:
        hook.remove()

    variances: Dict[int, List[torch.Tensor]] = {}
    trained = copy.deepcopy(net).train()  # train mode updates running statistics: a copy
    for index, unit in enumerate(m for m in trained.modules()
                                 if isinstance(m, ReferenceFourierUnit)):
        unit.bn.register_forward_hook(lambda bn, args, out, index=index: variances.setdefault(
            index, []).append(args[0].var(dim=(0, 2, 3))))
    with torch.no_grad():
        for step, batch in enumerate(data.train_dataloader()):
            if step == 16:
                break
            trained(batch.image.unsqueeze(1))
    cv = [(torch.stack(v).std(0) / torch.stack(v).mean(0)).median().item()
          for v in variances.values()]
    return {"share": share, "spike": spike, "batch-stat CV": cv}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("networks", nargs="+", help="'init' or a bench curves last.ckpt")
    parser.add_argument("--anatomy", choices=("knee", "brain"), default="knee")
    parser.add_argument("--global-module", default="fourier", choices=("fourier", "none"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = built_in_curve_data(args.anatomy, 256)
    for source in args.networks:
        found = probe(load(source, args.global_module), data)
        text = ", ".join(f"{name} {torch.tensor(v).median():.3f} [{min(v):.3f}, {max(v):.3f}]"
                         for name, v in found.items())
        print(f"{args.anatomy} {source}: {text}")


if __name__ == "__main__":
    main()

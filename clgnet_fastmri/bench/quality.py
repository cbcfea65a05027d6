"""``clgnet-fastmri bench quality``: train every model on the same data and budget, then score.

Each model is trained from the same seed on the same training split, with the same data
order and k-space masks, for the same wall-clock budget (``--minutes``, Lightning's
``max_time``; or ``--max-steps`` for a fixed step count), without validation passes. Its
final weights then reconstruct the scoring split through fastmri's test step (the
reconstructions written by ``MriModule``'s own saving code) and ``evaluate_folder`` scores
them with the official fastMRI metrics. The tables are shaped like the paper's Tables 3
(ablations) and 4 (global modules), with U-Net (Table 1's baseline) beside them.

Choices:

- Data: a built-in synthetic knee set (``QUALITY_DATA``: 128 px, 8 training and 2 validation
  volumes of 8 slices, the set of the figures in BENCHMARKS.md) unless ``--data_path`` names
  a fastMRI-format root.
- Scoring split: ``<challenge>_val`` (fully sampled), undersampled at ``--acceleration``
  with the mask seeded by file name (the demo's test transform masks fully sampled files):
  every model sees the same inputs. A test split cannot be used this way (its k-space is
  masked already, at accelerations of its own).
- U-Net trains as fastmri's ``train_unet_demo.py`` does (RMSprop, lr 1e-3, L1); the CLGNet
  variants with ``CLGNetModule``'s defaults (Adam, lr 1e-3, ``L1 + 0.05 L_CL``) except the
  schedule: a wall-clock budget has no known step count for the cosine schedule, so the
  learning rate is constant (the paper states no schedule). ``NAME:key=value,...`` overrides
  any ``CLGNetModule`` argument, e.g. ``clgnet:lr=1e-4`` (the paper's).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import pytorch_lightning as pl
import torch

from ..config import TrainConfig, parse_config
from ..data.checks import target_folder
from ..data.fastmri_layout import CHALLENGES
from ..errors import UserError
from ..evaluate import evaluate_folder
from ..files import atomic_output, ensure_writable_dir
from ..models.registry import VARIANTS, count_parameters
from ..pl_modules.kinds import KINDS, ModelKind
from ..settings import Rule, signature_settings
from ..training import build_data_module, build_module, cached_dataset

QUALITY_DATA = dict(anatomy="knee", size=128, num_slices=8,
                    splits={"train": 8, "val": 2, "test": 2})
# ``clgnet`` trains with L1 alone (the default), so it is also the "w/o L_CL" row.
DEFAULT_MODELS = ("unet", "clgnet", "no-wavelet", "no-sfl", "with-cl", "no-negative", "sa",
                  "tran")
TABLES = (
    ("Table 1 (baseline)", ("unet", "clgnet", "with-cl")),
    ("Table 3 (ablations)", ("no-wavelet", "no-sfl", "no-cl", "no-negative", "clgnet",
                             "with-cl")),
    ("Table 4 (global information)", ("no-sfl", "sa", "tran", "clgnet")),
)
METRICS = ("NMSE", "PSNR", "SSIM")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models", nargs="+", default=list(DEFAULT_MODELS), metavar="NAME[:k=v,...]",
        help=f"models to train, from {', '.join(VARIANTS)}; ':key=value,...' overrides "
        "CLGNetModule arguments (e.g. clgnet:lr=1e-4)",
    )
    parser.add_argument("--minutes", type=Rule(low=0, low_open=True).parser(float, "--minutes"),
                        default=3.0, help="training wall-clock budget per model")
    parser.add_argument("--max-steps", type=Rule(low=1).parser(int, "--max-steps"),
                        default=None, help="train for this many steps instead of --minutes")
    parser.add_argument("--data_path", type=Path, default=None,
                        help="fastMRI data root (<challenge>_train, <challenge>_val); "
                        "default: the built-in synthetic knee set")
    add_training_arguments(parser)
    parser.add_argument("--num-workers", type=int, default=0,
                        help="data-loading processes; 0 loads in the training one")
    parser.add_argument("--accelerator", default="auto", help="the device kind to train on")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: all available)")
    parser.add_argument("--output-dir", type=Path, default=Path("clgnet_runs/bench_quality"),
                        help="runs, reconstructions and quality.json go here")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The data, mask, batch, loss-weights, precision and seed options of the benchmarks that
    train (``quality``, ``curves``)."""
    parser.add_argument("--challenge", choices=CHALLENGES, default="singlecoil",
                        help="which fastMRI files the data holds")
    parser.add_argument("--acceleration", type=int, default=4, help="undersampling factor")
    parser.add_argument("--center-fraction", type=float, default=0.08,
                        help="fraction of low-frequency lines always kept")
    parser.add_argument("--batch-size", type=int, default=4, help="training slices per step")
    parser.add_argument("--vgg-weights", default="auto",
                        help="as 'clgnet-fastmri train --vgg_weights'")
    parser.add_argument("--precision", default="32-true",
                        help="Lightning's precision, as 'clgnet-fastmri train --precision'")
    parser.add_argument("--seed", type=int, default=42,
                        help="seed of the weights, masks and data order (the same for every "
                        "model)")


def run(args: argparse.Namespace) -> int:
    specs = [parse_spec(text) for text in args.models]
    if args.threads:
        torch.set_num_threads(args.threads)
    data_path = args.data_path or cached_dataset(QUALITY_DATA, args.challenge)
    ensure_writable_dir(args.output_dir)
    results = []
    for name, overrides in specs:
        results.append(train_and_score(name, overrides, data_path, args))
        print(f"[bench quality] {_summary(results[-1])}", file=sys.stderr, flush=True)
    report = {
        "meta": {
            "argv": sys.argv, "data_path": str(data_path), "challenge": args.challenge,
            "acceleration": args.acceleration, "minutes": args.minutes,
            "max_steps": args.max_steps, "batch_size": args.batch_size,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "date": datetime.date.today().isoformat(),
        },
        "runs": results,
    }
    path = args.output_dir / "quality.json"
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(format_tables(results))
    print(f"\nresults written to {path}")
    return 0


def parse_spec(text: str) -> Tuple[str, Dict[str, Any]]:
    """``"clgnet:lr=1e-3,alpha=0"`` -> ``("clgnet", {"lr": 0.001, "alpha": 0.0})``: each value
    typed and checked as the module's own option (``CLGNetModule.RULES``)."""
    name, _, rest = text.partition(":")
    if name not in VARIANTS:
        raise UserError(f"--models {text}: unknown model {name!r}; choose from "
                        f"{', '.join(VARIANTS)}")
    module_class = variant_kind(name).module
    settings = signature_settings(module_class)
    rules = getattr(module_class, "RULES", {})
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--models {text}: write overrides as key=value")
        if key not in settings:
            raise UserError(f"--models {text}: {module_class.__name__} has no setting {key!r}; "
                            f"choose from {', '.join(settings)}")
        parse = rules.get(key, Rule()).parser(settings[key][1], key)
        try:
            overrides[key] = parse(value)
        except argparse.ArgumentTypeError as exc:
            raise UserError(f"--models {text}: {key}: {exc}") from None
    return name, overrides


def variant_kind(name: str) -> ModelKind:
    """The model kind that trains variant ``name`` (its registered network's)."""
    return KINDS[VARIANTS[name].model]


def run_name(name: str, overrides: Dict[str, Any]) -> str:
    return name + "".join(f"_{k}={v}" for k, v in overrides.items())


def train_and_score(name: str, overrides: Dict[str, Any], data_path: Path,
                    args: argparse.Namespace) -> Dict[str, Any]:
    """Train one model for the budget, reconstruct the scoring split, score it."""
    root = args.output_dir / run_name(name, overrides)
    config = run_config(name, overrides, data_path, args, root)
    pl.seed_everything(args.seed, workers=True)
    data = build_data_module(config)
    module = build_module(config)
    recons = root / "reconstructions"
    if recons.exists():
        shutil.rmtree(recons)
    trainer = pl.Trainer(
        accelerator=args.accelerator, devices=1, precision=args.precision,
        max_time=None if args.max_steps else datetime.timedelta(minutes=args.minutes),
        max_steps=args.max_steps or -1, max_epochs=-1,
        limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root, use_distributed_sampler=False,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - start
    trainer.test(module, datamodule=data, verbose=False)
    split = data_path / f"{args.challenge}_val"
    targets = target_folder(split, args.challenge)
    if targets is None:
        raise UserError(f"{split}: holds no targets to score against")
    result = evaluate_folder(targets, recons, args.challenge)
    return {
        "run": run_name(name, overrides), "model": name, "label": VARIANTS[name].label,
        "overrides": overrides, "params": count_parameters(getattr(module, config.kind.network)),
        "steps": trainer.global_step, "train_s": seconds,
        "s_per_step": seconds / max(trainer.global_step, 1),
        "num_volumes": len(result.volumes), "mean": result.means(), "stddev": result.stddevs(),
    }


def run_config(name: str, overrides: Dict[str, Any], data_path: Path,
               args: argparse.Namespace, root: Path) -> TrainConfig:
    """The training settings of one benchmarked model: ``clgnet-fastmri train``'s defaults
    with this benchmark's data, mask, loader, precision and seed, the kind's settings for a
    wall-clock budget (``ModelKind.timed_run_args``), the variant's arguments and
    ``overrides``, checked as the command checks them."""
    kind = variant_kind(name)
    return parse_config({
        "data_path": data_path, "challenge": args.challenge,
        "accelerations": [args.acceleration], "center_fractions": [args.center_fraction],
        "batch_size": args.batch_size, "num_workers": args.num_workers, "seed": args.seed,
        "precision": args.precision, "test_split": "val", "default_root_dir": root,
        "model": kind.name, **({"vgg_weights": args.vgg_weights} if kind.contrastive else {}),
        **kind.timed_run_args, **VARIANTS[name].kwargs, **overrides,
    })


def _summary(result: Dict[str, Any]) -> str:
    m = result["mean"]
    return (f"{result['run']}: {result['steps']} steps in {result['train_s']:.0f} s, "
            f"PSNR {m['PSNR']:.2f}, SSIM {m['SSIM']:.4f}, NMSE {m['NMSE']:.4f}")


def format_tables(results: Sequence[Dict[str, Any]]) -> str:
    """Markdown tables shaped like the paper's, then every run."""
    by_model: Dict[str, Dict[str, Any]] = {}
    for r in results:
        if not r["overrides"]:
            by_model.setdefault(r["model"], r)
    out: List[str] = []
    for title, names in TABLES:
        rows = [by_model[n] for n in names if n in by_model]
        if len(rows) > 1:
            out += [f"{title}:", "", *_table(rows), ""]
    out += ["All runs:", "", *_table(results)]
    return "\n".join(out)


def _table(rows: Sequence[Dict[str, Any]]) -> List[str]:
    lines = ["| model | params (M) | steps | s/step | NMSE | PSNR | SSIM |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        label = r["label"] + "".join(f", {k}={v}" for k, v in r["overrides"].items())
        m = r["mean"]
        lines.append(f"| {label} | {r['params'] / 1e6:.3f} | {r['steps']} | "
                     f"{r['s_per_step']:.2f} | {m['NMSE']:.4f} | {m['PSNR']:.2f} | "
                     f"{m['SSIM']:.4f} |")
    return lines

"""``clgnet-fastmri bench curves``: validation learning curves, each model until it plateaus.

Every model trains from the same seed on the same training split, data order and k-space
masks, and every ``--eval-every`` optimiser steps fastmri's validation step scores a fixed
validation split (fastmri's per-volume NMSE, PSNR and SSIM, as ``MriModule`` logs them). Each
point records the step, the training seconds and the training CPU seconds so far. A run stops
at ``--max-steps``, at ``--max-minutes`` of training CPU time, or at its plateau: when its best
validation PSNR has gained less than ``--plateau-db`` over the last fifth of its steps.

Written to ``--output-dir``: ``<run>/last.ckpt`` (the resume point, saved at every
evaluation), ``curves.json`` (every run's points, stop reason and summary) and
``curves.png`` (PSNR against steps and against training seconds, every model on one plot).
Started again with the same arguments, a killed run continues from its last evaluation and
finished runs are not repeated. The stop rules (``--max-minutes``, ``--plateau-db``,
``--min-steps``) may change between starts: a run that the earlier rules stopped continues
from where it stopped if the new ones would not have stopped it.

Choices:

- Data: with no ``--data_path``, a built-in synthetic set (``--anatomy knee`` or ``brain``)
  at 128 x 128 with 24 training and 4 validation volumes of 8 slices, generated once into the
  cache folder: three times the demo's training set, so that a long run measures learning
  rather than memorisation of 64 slices. From 256 x 256 on (the paper's size) the validation
  split holds 2 volumes, so that an evaluation stays well under a minute on one CPU thread.
- Each model trains its own way: U-Net exactly as fastmri's ``train_unet_demo.py`` (RMSprop,
  lr 1e-3, StepLR x0.1 after 40 epochs, L1); CLGNet variants with ``CLGNetModule``'s defaults
  except a constant learning rate: a run that ends at its plateau has no length known in
  advance for a cosine schedule to span. ``NAME:key=value`` overrides any argument
  (``clgnet:lr_schedule=cosine`` spans ``--max-steps``).
- Seconds are the time spent inside training batches (forward, loss, backward, optimiser
  step); data loading, validation and checkpointing are excluded for every model alike. CPU
  seconds are the process's CPU time over the same intervals: with ``--threads 1`` they are
  robust to other work on the machine, wall seconds are not.
- The summary's PSNR and SSIM: their means over the last fifth of a run's steps, which is its
  plateau when the run stopped at one (``stopped`` says why each run ended).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import pytorch_lightning as pl
import torch
from fastmri.data.subsample import RandomMaskFunc
from pytorch_lightning.callbacks import Callback
from tqdm import tqdm

from ..checkpoints import AtomicCheckpointIO, read_checkpoint
from ..data.fastmri_layout import ANATOMIES
from ..data.transforms import CLGNetDataTransform
from ..errors import UserError
from ..files import ensure_writable_dir, write_json, write_png
from ..models.registry import UNET, VARIANTS
from ..pl_modules.data_module import CLGNetDataModule
from ..training import build_module, cached_dataset, record_run, resolve_vgg
from .quality import add_training_arguments, parse_spec, run_config, run_name

DEFAULT_MODELS = ("unet", "clgnet", "with-cl", "no-sfl")
#: The built-in learning-curve sets (see the module doc).
CURVE_DATA = dict(size=128, num_slices=8, splits={"train": 24, "val": 4})
#: From this image size on, the built-in set validates on 2 volumes instead of 4.
LARGE_SIZE = 256
METRICS = ("psnr", "ssim", "nmse")
#: --clock -> the point's field that holds that clock's training seconds.
CLOCKS = {"cpu": "train_cpu_s", "wall": "train_s"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models", nargs="+", default=list(DEFAULT_MODELS), metavar="NAME[:k=v,...]",
        help=f"models to train, from {', '.join(VARIANTS)}; ':key=value,...' overrides "
        "CLGNetModule arguments (e.g. clgnet:lr=1e-4)",
    )
    parser.add_argument("--anatomy", choices=ANATOMIES, default="knee",
                        help="built-in synthetic set to use when --data_path is not given")
    parser.add_argument("--size", type=int, default=CURVE_DATA["size"],
                        help="image size of the built-in set")
    parser.add_argument("--data_path", type=Path, default=None,
                        help="fastMRI data root (<challenge>_train, <challenge>_val)")
    parser.add_argument("--eval-every", type=int, default=100,
                        help="optimiser steps between two validation points")
    parser.add_argument("--max-steps", type=int, default=6000,
                        help="longest run (also the span of CLGNet's cosine schedule)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop a model after this many minutes of training (--clock)")
    parser.add_argument("--clock", choices=CLOCKS, default="cpu",
                        help="what --max-minutes and the plot's time axis count: the "
                        "process's CPU time (robust to other work on a CPU machine) or wall time "
                        "(for GPUs)")
    parser.add_argument("--plateau-db", type=float, default=0.1,
                        help="stop when the best PSNR gained less than this over the last "
                        "fifth of the steps (0: never)")
    parser.add_argument("--min-steps", type=int, default=1000,
                        help="no plateau stop before this many steps")
    add_training_arguments(parser)
    parser.add_argument("--accelerator", default="cpu", help="the device kind to train on")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 makes CPU seconds comparable)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="default: clgnet_runs/curves/<anatomy or data folder name>")
    parser.add_argument("--no-progress-bar", action="store_true",
                        help="no progress bars (for log files)")
    parser.add_argument("--report", action="store_true",
                        help="print the tables of the curves.json in --output-dir (or the "
                        "default folder) and exit, training nothing")


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.report:
        return _print_report(args)
    specs = [parse_spec(text) for text in args.models]
    torch.set_num_threads(args.threads)
    data_path = args.data_path or curve_dataset(args.anatomy, args.challenge, args.size)
    out = _output_dir(args)
    ensure_writable_dir(out)
    report_path = out / "curves.json"
    report = _read_report(report_path, args)
    for name, overrides in specs:
        key = run_name(name, overrides)
        done = report["runs"].get(key, {}).get("stopped")
        if done and not _may_continue(report["runs"][key], args):
            print(f"[bench curves] {key}: finished earlier ({done})", file=sys.stderr)
            continue

        def publish(record: Dict[str, Any], key: str = key) -> None:
            report["runs"][key] = record
            _save(report, report_path, out, args.clock)

        train_curve(name, overrides, data_path, out / key, args, publish)
    report["summary"] = summarize(report["runs"])
    _save(report, report_path, out, args.clock)
    print(format_report(report, args.clock))
    print(f"\ncurves written to {report_path} and {out / 'curves.png'}")
    return 0


def _output_dir(args: argparse.Namespace) -> Path:
    if args.output_dir is not None:
        return args.output_dir
    name = args.anatomy if args.data_path is None else Path(args.data_path).name
    return Path("clgnet_runs/curves") / name


def _print_report(args: argparse.Namespace) -> int:
    path = _output_dir(args) / "curves.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: no readable bench curves report ({err}); give the "
                        "--output-dir of an earlier run") from None
    print(format_report(report, args.clock))
    return 0


def _check_args(args: argparse.Namespace) -> None:
    for option, value in (("--eval-every", args.eval_every), ("--max-steps", args.max_steps),
                          ("--batch-size", args.batch_size), ("--threads", args.threads)):
        if value < 1:
            raise UserError(f"{option} must be >= 1, got {value}")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise UserError(f"--max-minutes must be > 0, got {args.max_minutes}")
    if args.plateau_db < 0:
        raise UserError(f"--plateau-db must be >= 0, got {args.plateau_db}")


#: Settings that only decide when a run stops: they may differ from the report's.
STOP_RULES = ("max_minutes", "plateau_db", "min_steps")


def _may_continue(run: Dict[str, Any], args: argparse.Namespace) -> bool:
    """Whether a run that stopped at its budget or plateau goes on under ``args``' rules."""
    points = run.get("points") or []
    spent = points[-1][CLOCKS[args.clock]] if points else 0.0
    if args.max_minutes is not None and spent >= 60 * args.max_minutes:
        return False
    if run["stopped"] == "plateau":
        return not plateaued(points, args.plateau_db, args.min_steps)
    return run["stopped"] == "max_minutes"


def curve_dataset(anatomy: str, challenge: str, size: int = CURVE_DATA["size"]) -> Path:
    """The built-in learning-curve set of ``anatomy``, generated once into the cache."""
    splits = dict(CURVE_DATA["splits"], val=2) if size >= LARGE_SIZE else CURVE_DATA["splits"]
    return cached_dataset(dict(CURVE_DATA, anatomy=anatomy, size=size, splits=splits),
                               challenge)


def _read_report(path: Path, args: argparse.Namespace) -> Dict[str, Any]:
    """The report of an earlier run with the same settings (``STOP_RULES`` may differ), or
    a new one."""
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())
                if k not in ("models", "no_progress_bar", "report", "bench", "command")}
    if path.is_file():
        report = json.loads(path.read_text())
        rules = dict.fromkeys(STOP_RULES)
        if {**report.get("settings", {}), **rules} != {**settings, **rules}:
            raise UserError(
                f"{path}: written by a run with other settings; use another --output-dir "
                "or the same arguments (other stop rules allowed) to continue it"
            )
        report["settings"].update({k: settings[k] for k in STOP_RULES})
        return report
    return {"settings": settings, "meta": {"torch": torch.__version__, "cpu": _cpu_name(),
                                           "date": datetime.date.today().isoformat()},
            "runs": {}}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _save(report: Dict[str, Any], path: Path, out: Path, clock: str) -> None:
    write_json(path, report)
    if any(r.get("points") for r in report["runs"].values()):
        plot_curves(report["runs"], out / "curves.png", clock, title=str(out))


class CurveRecorder(Callback):
    """Records a validation point after every evaluation, times the training batches, stops
    at a plateau or a time budget. Its state (the points) is saved in the checkpoints."""

    def __init__(self, label: str, checkpoint: Path, clock: str, max_seconds: Optional[float],
                 plateau_db: float, min_steps: int, on_point: Callable[[], None],
                 progress: bool, total_steps: int):
        self.label = label
        self.checkpoint = checkpoint
        self.clock = CLOCKS[clock]
        self.max_seconds = max_seconds
        self.plateau_db = plateau_db
        self.min_steps = min_steps
        self.on_point = on_point
        self.points: List[Dict[str, float]] = []
        self.train_s = 0.0
        self.train_cpu_s = 0.0
        self.stopped: Optional[str] = None
        self._bar = tqdm(total=total_steps, desc=label, disable=not progress, file=sys.stderr,
                         dynamic_ncols=True)
        self._start = (0.0, 0.0)

    def state_dict(self) -> Dict[str, Any]:
        return {"points": self.points, "train_s": self.train_s, "train_cpu_s": self.train_cpu_s}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.points = list(state["points"])
        self.train_s, self.train_cpu_s = state["train_s"], state["train_cpu_s"]

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._bar.n = trainer.global_step
        self._bar.refresh()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.train_s += time.perf_counter() - self._start[0]
        self.train_cpu_s += time.process_time() - self._start[1]
        self._bar.update(trainer.global_step - self._bar.n)
        if self.max_seconds is not None and self.state_dict()[self.clock] >= self.max_seconds:
            self._stop(trainer, "max_minutes")

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        point = {"step": trainer.global_step, "train_s": self.train_s,
                 "train_cpu_s": self.train_cpu_s,
                 **{m: float(metrics[f"val_metrics/{m}"]) for m in METRICS}}
        if not all(math.isfinite(point[m]) for m in METRICS):
            raise UserError(f"{self.label}: non-finite validation metrics at step "
                            f"{point['step']}: {point}")
        self.points.append(point)
        self._bar.set_postfix(psnr=f"{point['psnr']:.2f}", ssim=f"{point['ssim']:.4f}")
        if plateaued(self.points, self.plateau_db, self.min_steps):
            self._stop(trainer, "plateau")
        # Saved after the point is recorded, so that a resumed run neither loses nor repeats it.
        trainer.save_checkpoint(self.checkpoint, weights_only=False)
        self.on_point()

    def _stop(self, trainer: pl.Trainer, reason: str) -> None:
        self.stopped = reason
        trainer.should_stop = True

    def close(self) -> None:
        self._bar.close()


def plateaued(points: Sequence[Dict[str, float]], plateau_db: float, min_steps: int) -> bool:
    """Whether the best PSNR gained less than ``plateau_db`` over the last fifth of the steps."""
    if plateau_db <= 0 or not points or points[-1]["step"] < min_steps:
        return False
    cut = 0.8 * points[-1]["step"]
    before = [p["psnr"] for p in points if p["step"] <= cut]
    if not before:
        return False
    return max(p["psnr"] for p in points) - max(before) < plateau_db


def curve_data_module(data_path: Path, args: argparse.Namespace) -> CLGNetDataModule:
    """The data of a curve run: training slices under a new random mask each time they are
    drawn (a sequence fixed by ``--seed``), validation slices under the mask their file name
    seeds, the same at every evaluation and for every model."""
    mask = RandomMaskFunc([args.center_fraction], [args.acceleration], seed=args.seed)
    return CLGNetDataModule(
        data_path=data_path, challenge=args.challenge,
        train_transform=CLGNetDataTransform(args.challenge, mask, use_seed=False),
        val_transform=CLGNetDataTransform(args.challenge, mask),
        test_transform=CLGNetDataTransform(args.challenge, mask),
        batch_size=args.batch_size, num_workers=0,
    )


def built_in_curve_data(anatomy: str, size: int) -> CLGNetDataModule:
    """The data of ``bench curves --anatomy ANATOMY --size SIZE`` at the command's other
    defaults, set up: what a probe of those runs' checkpoints reads."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--anatomy", anatomy, "--size", str(size)])
    data = curve_data_module(curve_dataset(anatomy, args.challenge, size), args)
    data.setup("fit")
    return data


def train_curve(name: str, overrides: Dict[str, Any], data_path: Path, root: Path,
                args: argparse.Namespace,
                publish: Callable[[Dict[str, Any]], None]) -> Dict[str, Any]:
    """Train one model, evaluating every ``--eval-every`` steps; resume from ``root``.

    ``publish(record)`` is called with the run's record after every evaluation and at the end.
    """
    label = run_name(name, overrides)
    pl.seed_everything(args.seed, workers=True)
    data = curve_data_module(data_path, args)
    quality_args = argparse.Namespace(**vars(args), num_workers=0)
    config = run_config(name, overrides, data_path, quality_args, root)
    vgg = resolve_vgg(config)
    module = build_module(config, vgg)
    resume = root / "last.ckpt"
    if resume.is_file():
        check_same_recipe(resume, module)

    def record() -> Dict[str, Any]:
        return {"model": name, "label": VARIANTS[name].label, "overrides": overrides,
                "points": recorder.points, "stopped": recorder.stopped}

    recorder = CurveRecorder(
        label, resume, args.clock, None if args.max_minutes is None else 60 * args.max_minutes,
        args.plateau_db, args.min_steps, on_point=lambda: publish(record()),
        progress=not args.no_progress_bar, total_steps=args.max_steps,
    )
    trainer = pl.Trainer(
        accelerator=args.accelerator, devices=1, precision=args.precision,
        max_steps=args.max_steps, max_epochs=-1,
        val_check_interval=args.eval_every, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
        use_distributed_sampler=False, plugins=[AtomicCheckpointIO()],
        callbacks=[recorder, record_run(config, vgg)],
    )
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume.is_file() else None,
                    weights_only=True)
    finally:
        recorder.close()
    if recorder.stopped is None and trainer.global_step >= args.max_steps:
        recorder.stopped = "max_steps"
    publish(record())
    return record()


def check_same_recipe(checkpoint: Path, module: pl.LightningModule) -> None:
    """A run resumes only under the module arguments it was trained with: a default changed
    since it started, or other overrides, would join two recipes in one curve."""
    saved = read_checkpoint(checkpoint).get("hyper_parameters", {})
    changed = [f"{key} {saved[key]!r} there, {value!r} now"
               for key, value in module.hparams.items() if key in saved and saved[key] != value]
    if changed:
        raise UserError(
            f"{checkpoint}: this run was trained with other settings ({'; '.join(changed)}); "
            "resume it with the code and overrides it was started with, or move its folder "
            "away to train it afresh"
        )


def summarize(runs: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Plateau PSNR/SSIM of each run, and when it first reached U-Net's plateau PSNR."""
    rows = []
    plateaus = {key: _plateau(run["points"]) for key, run in runs.items() if run.get("points")}
    unet = plateaus.get(UNET)
    for key, run in runs.items():
        if key not in plateaus:
            continue
        row = {"run": key, "label": run["label"], "stopped": run.get("stopped"),
               "steps": run["points"][-1]["step"], "train_s": run["points"][-1]["train_s"],
               "train_cpu_s": run["points"][-1]["train_cpu_s"], **plateaus[key]}
        if unet is not None:
            reached = [p for p in run["points"] if p["psnr"] >= unet["psnr"]]
            row["reach_unet"] = ({"step": reached[0]["step"], "train_s": reached[0]["train_s"],
                                  "train_cpu_s": reached[0]["train_cpu_s"]}
                                 if reached else None)
        rows.append(row)
    return rows


def _plateau(points: Sequence[Dict[str, float]]) -> Dict[str, float]:
    cut = 0.8 * points[-1]["step"]
    tail = [p for p in points if p["step"] >= cut] or list(points[-1:])
    return {m: sum(p[m] for p in tail) / len(tail) for m in METRICS}


def format_summary(rows: Sequence[Dict[str, Any]], clock: str = "cpu") -> str:
    """A Markdown table of ``summarize``'s rows, times in minutes of ``clock``."""
    field, unit = CLOCKS[clock], f"{clock} min"
    # "last fifth": a plateau where the run stopped at one, else where its budget ended.
    lines = [f"| model | stopped | steps | {unit} | PSNR, last fifth | SSIM, last fifth | "
             "reaches U-Net's last-fifth PSNR at |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        reach = r.get("reach_unet")
        when = ("never" if reach is None else
                f"step {reach['step']}, {reach[field] / 60:.1f} {unit}")
        lines.append(f"| {r['run']} | {r['stopped']} | {r['steps']} | "
                     f"{r[field] / 60:.1f} | {r['psnr']:.2f} | {r['ssim']:.4f} | {when} |")
    return "\n".join(lines)


def read_at(points: Sequence[Dict[str, float]], field: str,
            value: float) -> Optional[Dict[str, float]]:
    """The metrics at ``value`` of ``field`` (``step``, ``train_s`` or ``train_cpu_s``),
    linearly interpolated between the two validation points around it; None outside the run.

    This is how two runs are compared "at equal CPU time": each curve read at the same
    seconds, though their validation points fall at different times.
    """
    for before, after in zip(points, points[1:]):
        if before[field] <= value <= after[field]:
            span = after[field] - before[field]
            w = (value - before[field]) / span if span else 1.0
            return {m: (1 - w) * before[m] + w * after[m] for m in METRICS}
    if points and points[0][field] == value:
        return {m: points[0][m] for m in METRICS}
    return None


def format_comparison(runs: Dict[str, Dict[str, Any]], field: str,
                      values: Sequence[float], unit: Callable[[float], str]) -> str:
    """A Markdown table: PSNR / SSIM / NMSE of every run at each of ``values`` of ``field``."""
    lines = ["| model | " + " | ".join(unit(v) for v in values) + " |",
             "|---|" + "---|" * len(values)]
    for key, run in runs.items():
        cells = []
        for value in values:
            m = read_at(run.get("points") or [], field, value)
            cells.append("-" if m is None else
                         f"{m['psnr']:.2f} / {m['ssim']:.4f} / {m['nmse']:.4f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_points(runs: Dict[str, Dict[str, Any]], field: str) -> List[float]:
    """Where to compare runs: steps 50, 100, 200, 400, ... up to the longest run's end (a
    shorter run shows "-"), or seconds: quarters of the shortest run, then the longest's end."""
    ends = [run["points"][-1][field] for run in runs.values() if run.get("points")]
    if not ends:
        return []
    if field == "step":
        return [50 * 2 ** i for i in range(int(math.log2(max(ends) / 50)) + 1)
                if max(ends) >= 50]
    quarters = [min(ends) * k / 4 for k in range(1, 5)]
    return quarters + [max(ends)] if max(ends) > 1.05 * min(ends) else quarters


def format_report(report: Dict[str, Any], clock: str = "cpu") -> str:
    """The summary, then every run at equal steps and at equal ``clock`` seconds."""
    runs = report["runs"]
    field = CLOCKS[clock]
    return "\n\n".join([
        format_summary(summarize(runs), clock),
        "PSNR / SSIM / NMSE at equal steps:\n" + format_comparison(
            runs, "step", comparison_points(runs, "step"), lambda v: f"step {v:.0f}"),
        f"PSNR / SSIM / NMSE at equal training {clock} time:\n" + format_comparison(
            runs, field, comparison_points(runs, field), lambda v: f"{v / 60:.1f} min"),
    ])


def plot_curves(runs: Dict[str, Dict[str, Any]], path: Path, clock: str = "cpu",
                title: str = "") -> None:
    """PSNR against steps and against training minutes of ``clock``, every run on one plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for key, run in runs.items():
        points = run.get("points") or []
        if not points:
            continue
        psnr = [p["psnr"] for p in points]
        by_step.plot([p["step"] for p in points], psnr, label=key)
        by_time.plot([p[CLOCKS[clock]] / 60 for p in points], psnr, label=key)
    by_step.set_xlabel("optimiser steps")
    by_time.set_xlabel(f"training minutes ({clock} time)")
    by_step.set_ylabel("validation PSNR (dB)")
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
    by_time.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    write_png(path, fig, dpi=100)
    plt.close(fig)

"""``clgnet-fastmri bench speed``: parameters, FLOPs, time and memory, side by side with U-Net.

For every image size, U-Net and the other models are built in one process and measured side
by side:

- parameters, and forward FLOPs of one slice counted by ``torch.utils.flop_counter``
  (reported in GMac = FLOPs / 2, the unit of the paper's Tables 2 and 4). The counter knows
  matrix products, convolutions and attention kernels; FFTs, norms and element-wise work are
  not counted (as in the paper's counters).
- inference time per slice (batch 1, ``torch.inference_mode``, eval mode): warm-up calls, then
  the best (minimum) of ``--repeats`` timed calls. The timed calls of the models are
  interleaved (U-Net, model 1, model 2, U-Net, ...), so that load from other processes falls
  on all of them alike; the minimum is the call least disturbed by it.
- training-step time at ``--batch-size``: forward, loss, backward and an Adam step, with L1
  only and with CLGNet's loss ``L1 + 0.05 L_CL`` (VGG19 randomly initialised: the ImageNet
  weights are not needed to time it). The difference is the contrastive loss's cost, reported
  beside its share of the step's FLOPs (forward and backward, counted the same way).
- peak memory of one call after a warm-up call: on CUDA ``torch.cuda.max_memory_allocated``;
  on CPU the peak resident set size above the call's start (``/proc/self/statm`` sampled every
  millisecond by a thread), in a child process per network whose glibc gives every block
  above 64 KiB its own mapping, unmapped when freed (``MALLOC_MMAP_THRESHOLD_``): the figure
  is then the tensors the call holds at once, as on CUDA. Under glibc's default (a threshold
  that rises to the largest block freed so far) freed blocks stay in its heap, and the
  resident set follows the order of allocations more than the network; in the timing process
  that default is left alone, since mapping every block slows every call.

Each time is also given as a ratio to U-Net's time at the same size in the same run: on a
shared machine the ratio is the figure to read. One run measures one setting of ``--device``,
``--bf16``, ``--channels-last`` and ``--compile``; compare settings with one run each.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import multiprocessing
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from ..errors import UserError
from ..files import atomic_output, check_output_file
from ..losses import PAPER_ALPHA, CLGNetLoss, ContrastiveLoss, VGG19Features
from ..models import layout
from ..models.registry import UNET, VARIANTS, build_network, count_parameters, networks
from ..pl_modules.clgnet_module import CLGNetModule
from ..settings import signature_defaults

DEFAULT_SIZES = (256, 320, 512)
# The paper's loss: its weight of L_CL, and the negatives CLGNetModule draws for it.
ALPHA, K_NEGATIVES = PAPER_ALPHA, signature_defaults(CLGNetModule)["k_negatives"]

_aten = torch.ops.aten


def _as_registered(op) -> Callable:
    """torch's own formula for ``op``, marked so the counter does not wrap it a second time."""
    formula = flop_registry[op]

    def count(*args, **kwargs) -> int:
        return formula(*args, **kwargs)

    count._get_raw = True  # type: ignore[attr-defined]
    return count


# Ops torch's counter does not list: the in-place batched product CLGNet's 1x1 convolutions
# use, and the CPU kernels of scaled_dot_product_attention.
_EXTRA_FLOPS = {
    _aten.baddbmm_: _as_registered(_aten.baddbmm),
    _aten._scaled_dot_product_flash_attention_for_cpu:
        _as_registered(_aten._scaled_dot_product_flash_attention),
    _aten._scaled_dot_product_flash_attention_for_cpu_backward:
        _as_registered(_aten._scaled_dot_product_flash_attention_backward),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", choices=networks(), default=list(networks()),
                        help="networks to measure (U-Net is always measured first: the ratios "
                        "are to it)")
    parser.add_argument("--sizes", nargs="+", type=int, default=list(DEFAULT_SIZES),
                        help="square image sizes")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: all available)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true",
                        help="model and inputs in channels_last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed calls per model, interleaved between the models (the "
                        "minimum is reported)")
    parser.add_argument("--batch-size", type=int, default=4, help="training-step batch size")
    parser.add_argument("--no-train", action="store_true", help="inference only")
    parser.add_argument("--no-cl", action="store_true",
                        help="training step with the L1 loss only (no contrastive loss)")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP counts")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available; use --device cpu")
    if min(args.sizes) < 16 or min(args.warmup, args.repeats - 1, args.batch_size - 1) < 0:
        raise UserError("sizes must be >= 16, --repeats and --batch-size >= 1, --warmup >= 0")
    if args.json:
        check_output_file(args.json, "--json")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [UNET] + [m for m in args.models if m != UNET]
    rows = []
    for size in args.sizes:
        rows += measure_side_by_side(names, size, args, device)
        for row in rows[-len(names):]:
            print(_progress(row), file=sys.stderr, flush=True)
    add_ratios(rows)
    meta = machine(device, args)
    print(format_tables(rows, meta))
    if args.json:
        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


def machine(device: torch.device, args: argparse.Namespace) -> Dict[str, object]:
    """What the numbers were measured on and how."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_model()
    return {
        "argv": sys.argv,
        "device": f"{device.type}: {name}",
        "cpu": _cpu_model(),
        # The vector instruction set torch's CPU kernels dispatch to (AVX2, AVX512, ...).
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # The layouts the Fourier units and convolutions measured fastest in this process.
        "layouts": layout.chosen(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
        "bf16": args.bf16, "channels_last": args.channels_last, "compile": args.compile,
        "batch_size": args.batch_size, "warmup": args.warmup, "repeats": args.repeats,
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def measure_side_by_side(names: Sequence[str], size: int, args: argparse.Namespace,
                         device: torch.device) -> List[Dict]:
    """All figures of the networks ``names`` at one size, their timed calls interleaved."""
    prepared = [prepare(name, size, args, device) for name in names]
    for key in prepared[0][1]:
        calls = [fns[key] for _, fns in prepared]
        for (row, _), seconds in zip(prepared, timed(calls, args.warmup, args.repeats, device)):
            row[f"{key}_s"] = seconds
    for name, (row, calls) in zip(names, prepared):
        peaks = (peak_memories(calls, device) if device.type == "cuda" else
                 _in_child(_child_peak_memories, name, size,
                           argparse.Namespace(**{**vars(args), "no_flops": True})))
        row.update({f"{key}_peak_mb": mib for key, mib in peaks.items()})
    return [row for row, _ in prepared]


def peak_memories(calls: Dict[str, Callable[[], None]], device: torch.device) -> Dict[str, float]:
    """Peak memory (MiB) of each call, each after one warm-up call of its own."""
    peaks = {}
    for key, fn in calls.items():
        fn()
        _sync(device)
        with peak_memory(device) as peak:
            fn()
            _sync(device)
        peaks[key] = peak()
    return peaks


def _child_peak_memories(name: str, size: int, args: argparse.Namespace) -> Dict[str, float]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    return peak_memories(prepare(name, size, args, device)[1], device)


def _in_child(fn: Callable[..., Dict[str, float]], *fn_args: Any) -> Dict[str, float]:
    """``fn(*fn_args)`` in a fresh Python process whose glibc maps blocks above 64 KiB on
    their own (see the module doc)."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_send_result, args=(send, fn, fn_args))
    saved = dict(os.environ)
    os.environ.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="131072")
    try:
        child.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    send.close()
    try:
        result = receive.recv()
    except EOFError:
        result = None
    child.join()
    if result is None:
        raise RuntimeError(f"the memory measurement's process failed (exit code "
                           f"{child.exitcode}); its error is above")
    return result


def _send_result(send: Any, fn: Callable[..., Dict[str, float]], fn_args: tuple) -> None:
    send.send(fn(*fn_args))


def prepare(name: str, size: int, args: argparse.Namespace,
            device: torch.device) -> Tuple[Dict, Dict[str, Callable[[], None]]]:
    """One network's parameter and FLOP counts, and the calls to time (inference and training
    steps with each loss), each of which sets the train/eval mode it needs."""
    torch.manual_seed(0)
    model = build_network(name).to(device)
    row: Dict = {"model": name, "label": VARIANTS[name].label, "size": size,
                 "params": count_parameters(model)}
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if args.compile else model
    autocast = _autocast(device, args.bf16)
    image = _inputs(1, size, device, args.channels_last)
    model.eval()
    if not args.no_flops:
        with torch.inference_mode(), autocast():
            row["gmac"] = count_flops(lambda: model(image)) / 2e9

    def infer() -> None:
        model.eval()
        with torch.inference_mode(), autocast():
            net(image)

    calls = {"infer": infer}
    if args.no_train:
        return row, calls
    batch = _inputs(args.batch_size, size, device, args.channels_last)
    target = torch.randn_like(batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    for key, alpha in (("train_l1", 0.0), ("train_cl", ALPHA))[:1 if args.no_cl else 2]:
        loss = _loss(alpha).to(device)

        def step(network: nn.Module = net, loss: CLGNetLoss = loss) -> None:
            model.train()
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                parts = loss(network(batch), target, batch)
            parts.total.backward()
            optimizer.step()

        calls[key] = step
        if not args.no_flops:
            row[f"{key}_gmac"] = count_flops(lambda: step(model)) / 2e9
    return row, calls


def _loss(alpha: float) -> CLGNetLoss:
    if alpha == 0:
        return CLGNetLoss(alpha=0.0)
    contrastive = ContrastiveLoss(k_negatives=K_NEGATIVES, features=VGG19Features(weights=None))
    return CLGNetLoss(alpha=alpha, contrastive=contrastive)


def _inputs(batch: int, size: int, device: torch.device, channels_last: bool) -> Tensor:
    x = torch.randn(batch, 1, size, size, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _autocast(device: torch.device, bf16: bool) -> Callable[[], contextlib.AbstractContextManager]:
    if not bf16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def count_flops(fn: Callable[[], None]) -> int:
    """FLOPs of the matrix products, convolutions and attention that ``fn`` runs."""
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


def timed(calls: Sequence[Callable[[], None]], warmup: int, repeats: int,
          device: torch.device) -> List[float]:
    """Best seconds of each call: ``warmup`` untimed calls each, then ``repeats`` rounds that
    time every call once, in turn."""
    for fn in calls:
        for _ in range(warmup):
            fn()
    times: List[List[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for fn, spent in zip(calls, times):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            spent.append(time.perf_counter() - start)
    return [min(spent) for spent in times]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[Callable[[], float]]:
    """Peak memory (MiB) of the block: CUDA allocations, or on CPU the resident-set growth."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        result: List[float] = []
        yield lambda: result[0]
        result.append((torch.cuda.max_memory_allocated(device) - base) / 2**20)
        return
    with _RssSampler() as sampler:
        yield lambda: sampler.peak_mb


class _RssSampler:
    """Largest resident-set size above the starting one, sampled every millisecond."""

    _PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def __enter__(self) -> "_RssSampler":
        _release_free_memory()
        self.base = self._rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.base) / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self._rss())

    def _rss(self) -> int:
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * self._PAGE
        except OSError:  # not Linux: no figure rather than a wrong one
            return 0


def _release_free_memory() -> None:
    """Give memory freed by earlier calls back to the OS (glibc), so that a call reusing it
    still shows as growth; a no-op elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def add_ratios(rows: List[Dict]) -> None:
    """Each time divided by U-Net's at the same size (U-Net's own ratios are 1.0)."""
    unet = {r["size"]: r for r in rows if r["model"] == UNET}
    for row in rows:
        ref = unet[row["size"]]
        for key in ("infer_s", "train_l1_s", "train_cl_s"):
            if key in row:
                row[key.replace("_s", "_ratio")] = row[key] / ref[key]
        if "train_l1_peak_mb" in row and ref["train_l1_peak_mb"] > 0:
            row["train_l1_peak_ratio"] = row["train_l1_peak_mb"] / ref["train_l1_peak_mb"]
        if "train_cl_s" in row:
            row["cl_time_share"] = 1 - row["train_l1_s"] / row["train_cl_s"]
        if "train_cl_gmac" in row:
            row["cl_flop_share"] = 1 - row["train_l1_gmac"] / row["train_cl_gmac"]


_COLUMNS = (
    ("label", "model", "{}"),
    ("params", "params (M)", "{:.3f}"),
    ("gmac", "GMac", "{:.2f}"),
    ("infer_s", "infer (s)", "{:.4f}"),
    ("infer_ratio", "x U-Net", "{:.2f}"),
    ("infer_peak_mb", "infer peak (MiB)", "{:.0f}"),
    ("train_l1_s", "step L1 (s)", "{:.3f}"),
    ("train_l1_ratio", "x U-Net", "{:.2f}"),
    ("train_l1_peak_mb", "step L1 peak (MiB)", "{:.0f}"),
    ("train_l1_peak_ratio", "x U-Net", "{:.2f}"),
    ("train_cl_s", "step L1+CL (s)", "{:.3f}"),
    ("train_cl_ratio", "x U-Net", "{:.2f}"),
    ("cl_time_share", "CL time share", "{:.0%}"),
    ("cl_flop_share", "CL FLOP share", "{:.0%}"),
    ("train_cl_peak_mb", "step L1+CL peak (MiB)", "{:.0f}"),
)


def format_tables(rows: Sequence[Dict], meta: Dict) -> str:
    """One Markdown table per image size."""
    out = [f"device: {meta['device']} (CPU: {meta['cpu']}, torch's CPU kernels: "
           f"{meta['cpu_capability']}), {meta['threads']} threads, torch {meta['torch']}, "
           f"bf16={meta['bf16']}, channels_last={meta['channels_last']}, "
           f"compile={meta['compile']}, train batch {meta['batch_size']}, "
           f"best of {meta['repeats']} interleaved calls after {meta['warmup']} warm-up, "
           f"{meta['date']}"]
    for size in dict.fromkeys(r["size"] for r in rows):
        sized = [r for r in rows if r["size"] == size]
        columns = [c for c in _COLUMNS if any(c[0] in r for r in sized)]
        out += ["", f"{size}x{size}:", "",
                "| " + " | ".join(title for _, title, _ in columns) + " |",
                "|" + "---|" * len(columns)]
        for row in sized:
            cells = [_cell(row, key, fmt) for key, _, fmt in columns]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out + _layout_lines(meta["layouts"]))


def _layout_lines(choices: Sequence[Dict]) -> List[str]:
    """One line per layout choice measured (``models.layout``), candidates' best times."""
    if not choices:
        return []
    lines = ["", "layouts chosen (models.layout; fix with CLGNET_LAYOUT):"]
    for choice in choices:
        times = ", ".join(f"{name} {seconds * 1e3:.2f} ms"
                          for name, seconds in choice["seconds"].items())
        shapes = " ".join("x".join(map(str, shape)) for shape in choice["shapes"])
        lines.append(f"- {choice['op']} {shapes}: {choice['chosen']} ({times})")
    return lines


def _cell(row: Dict, key: str, fmt: str) -> str:
    if key not in row:
        return "-"
    value = row[key] / 1e6 if key == "params" else row[key]
    return fmt.format(value)


def _progress(row: Dict) -> str:
    parts = [f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)]
    return f"[bench speed] {row['model']} {row['size']}px: " + " ".join(parts)

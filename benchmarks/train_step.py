"""Times a full SeCu training step of a ResNet-50 against the same step without SeCu.

Synthetic images on the device (no data loading), timm ``resnet50`` (``num_classes=0``,
channels_last), the paper's ImageNet projection head and predictor, bf16 autocast, two views of
``--batch`` images each, and an SGD step over everything that has gradient:

- mode ``A``: backbone + projection + predictor with a trivial loss (the mean of the outputs):
  the cost of the network alone;
- mode ``B``: the same with :class:`secu_plugin.SeCuLoss` (``z0, z1, p0, p1``) on the ImageNet
  heads (K = 1000..10000) and a bank of N = 1,281,167 instances, its centers in the optimizer.

The difference of the two is what SeCu adds to a step. Prints ms/step, images/s (two views
count as ``2 * batch`` images), peak memory and the SeCu overhead. The modes are timed in
``--repeats`` interleaved rounds (A B C, A B C, ...: a machine that slows down during the run
slows every mode alike); each mode's ms/step is the median of its rounds, every round kept in
the JSON with the provenance (``benchmarks/provenance.py``).

Usage::

    python benchmarks/train_step.py                       # CUDA, batch 256, 224 x 224
    python benchmarks/train_step.py --compile --json out.json
    python benchmarks/train_step.py --smoke               # tiny sizes on the CPU (seconds)
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import timm
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import device_environment, start_record, synchronize, timed, write_json
from secu_plugin import SeCuCenterBank, SeCuLoss
from secu_plugin.models import build_predictor, build_projection_head

IMAGENET_HEADS = list(range(1000, 10001, 1000))
IMAGENET_SIZE = 1_281_167


class Network(nn.Module):
    """Backbone, projection and predictor: one view in, ``(z, p)`` out."""

    def __init__(self, backbone: str, dim: int) -> None:
        super().__init__()
        self.backbone = timm.create_model(backbone, num_classes=0, pretrained=False)
        # The ImageNet heads of the paper, as SeCuModel builds them.
        self.projection = build_projection_head(self.backbone.num_features, 2048, dim, num_layers=3)
        self.predictor = build_predictor(dim, 2048)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projection(self.backbone(x))
        return z, self.predictor(z)


def build_step(mode: str, args: argparse.Namespace, device: torch.device) -> Callable[[], None]:
    """A closure running one training step of ``mode`` (``"A"`` or ``"B"``) on fixed images."""
    torch.manual_seed(0)
    network = Network(args.backbone, args.dim).to(device, memory_format=torch.channels_last)
    if args.compile:
        network.backbone = torch.compile(network.backbone)
    parameters = list(network.parameters())
    criterion = None
    if mode in ("B", "C"):
        bank = SeCuCenterBank(
            args.dim, args.heads, args.num_instances, head_reductions=args.head_reductions
        ).to(device)
        bank.start_epoch()
        criterion = SeCuLoss(bank, check_values=mode == "B")
        parameters += list(bank.parameters())
    optimizer = torch.optim.SGD(parameters, lr=0.05, momentum=0.9, weight_decay=1e-4)

    shape = (args.batch, 3, args.image_size, args.image_size)
    generator = torch.Generator().manual_seed(1)
    views = [
        torch.randn(shape, generator=generator).to(device, memory_format=torch.channels_last)
        for _ in range(2)
    ]
    order = torch.randperm(args.num_instances, generator=generator).to(device)
    position = [0]

    def step() -> None:
        start = position[0]
        if start + args.batch > args.num_instances:
            start = 0
        indices = order[start : start + args.batch]
        position[0] = start + args.batch
        with torch.autocast(device.type, dtype=torch.bfloat16):
            z0, p0 = network(views[0])
            z1, p1 = network(views[1])
            if criterion is None:
                loss = sum(t.float().mean() for t in (z0, z1, p0, p1))
            else:
                loss = criterion(z0, z1, indices, p0, p1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def run_mode(mode: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Builds the step of ``mode``, warms it up, times ``args.steps`` steps; returns a row."""
    step = build_step(mode, args, device)
    for _ in range(args.warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(step, device, repeats=args.steps)
    row = {
        "mode": mode,
        "ms_per_step": 1e3 * seconds,
        "images_per_s": 2 * args.batch / seconds,
        "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else None,
    }
    del step
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def summarize(mode: str, rounds: list[dict], batch: int) -> dict:
    """One mode's row over its rounds: the median ms/step, its min and max, every round."""
    times = sorted(row["ms_per_step"] for row in rounds)
    median = float(statistics.median(times))
    peaks = [row["peak_mib"] for row in rounds if row["peak_mib"] is not None]
    return {
        "mode": mode,
        "ms_per_step": median,
        "ms_per_step_min": times[0],
        "ms_per_step_max": times[-1],
        "ms_per_step_rounds": [row["ms_per_step"] for row in rounds],
        "images_per_s": 2 * batch / (median / 1e3),
        "peak_mib": max(peaks) if peaks else None,
    }


def print_table(results: dict) -> None:
    env, args = results["environment"], results["args"]
    print(
        f"\n## Training step: {args['backbone']}, batch {args['batch']} x 2 views, "
        f"{args['image_size']}px, bf16 autocast, channels_last"
        + (", torch.compile" if args["compile"] else "")
    )
    print(f"device: {env.get('gpu', env['device'])}, torch {env['torch']}, timm {env['timm']}\n")
    print("| mode | ms/step | images/s | peak MiB |")
    print("|---|---|---|---|")
    heads = args["heads"]
    labels = {
        "A": "A: backbone + projection + predictor",
        "B": f"B: A + SeCuLoss ({len(heads)} heads, K = {min(heads)}..{max(heads)})",
        "C": "C: B with check_values=False (no device sync in the loss)",
    }
    for row in results["modes"]:
        peak = f"{row['peak_mib']:.0f}" if row["peak_mib"] is not None else "-"
        print(
            f"| {labels[row['mode']]} | {row['ms_per_step']:.1f} | {row['images_per_s']:.0f} "
            f"| {peak} |"
        )
    if "secu_unchecked_ms" in results:
        print(
            f"\nWith check_values=False SeCu adds {results['secu_unchecked_ms']:.1f} ms per step: "
            f"{results['secu_unchecked_overhead_pct_of_step']:.2f}% of the step time"
        )
    if "secu_overhead_pct_of_step" in results:
        print(
            f"\nSeCu adds {results['secu_ms']:.1f} ms per step: "
            f"{results['secu_overhead_pct_of_step']:.2f}% of the SeCu step time "
            f"({results['secu_overhead_pct_of_baseline']:.2f}% over mode A)"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch", type=int, default=256, help="images per view")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--num-instances", type=int, default=IMAGENET_SIZE)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per mode and round")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the modes")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per mode")
    parser.add_argument("--modes", default="ABC", help="modes to run, among A, B and C")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    parser.add_argument(
        "--head-reductions",
        default="auto",
        choices=["auto", "loop", "padded"],
        help="SeCuCenterBank(head_reductions=...)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: a few seconds")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    args.heads = IMAGENET_HEADS
    if args.smoke:
        args.batch, args.image_size, args.steps, args.warmup = 4, 32, 2, 1
        args.num_instances, args.heads = 64, [10, 20]
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")
    results = start_record()  # at the start: the load before the run
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available: use --device cpu (or --smoke)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    results["environment"] = device_environment(device, timm=timm.__version__)
    results["args"] = vars(args).copy()
    results["args"]["json"] = str(args.json) if args.json else None
    rounds: dict[str, list[dict]] = {mode: [] for mode in args.modes}
    for _ in range(args.repeats):
        for mode in args.modes:
            rounds[mode].append(run_mode(mode, args, device))
    results["modes"] = [summarize(mode, rows, args.batch) for mode, rows in rounds.items()]
    times = {row["mode"]: row["ms_per_step"] for row in results["modes"]}
    if "A" in times and "B" in times:
        results["secu_ms"] = times["B"] - times["A"]
        results["secu_overhead_pct_of_step"] = 100 * (times["B"] - times["A"]) / times["B"]
        results["secu_overhead_pct_of_baseline"] = 100 * (times["B"] - times["A"]) / times["A"]
    if "A" in times and "C" in times:
        results["secu_unchecked_ms"] = times["C"] - times["A"]
        results["secu_unchecked_overhead_pct_of_step"] = (
            100 * (times["C"] - times["A"]) / times["C"]
        )
    print_table(results)
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()

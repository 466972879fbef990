"""Times one SeCu loss step: the per-head baseline, the fused SeCuLoss, lightly's SwaV and the
product floor.

One step is the forward pass (including the constrained assignment and the state update),
the backward pass to the features and the centers (prototypes), and clearing the gradients.
The forms run on the same inputs, interleaved step by step (the order rotates), so that noise
from other processes hits all of them alike. Each of ``--rounds`` rounds gives the median of its
``--repeats`` steps per form; the table gives the median over rounds and their min-max.

- ``baseline``: :class:`PerHeadSeCuLoss` (secu_plugin/core/per_head.py), head by head with
  dense autograd through every logit;
- ``fused``: :class:`secu_plugin.SeCuLoss`;
- ``swav``: lightly's ``SwaVPrototypes`` (one linear layer per head, normalized each step) and
  ``SwaVLoss`` (Sinkhorn, 3 iterations) on the same heads and the two views, averaged over heads.
  Skipped with a message when lightly is not installed;
- ``floor``: the dense products SeCu's step cannot do without, alone, into preallocated outputs:
  the similarities to the centers and the logits against the targets, (views x B, dim) x
  (dim, sum K) each, and the logits' gradient back to the features, (views x B, sum K) x
  (sum K, dim). No assignment, softmax, state or autograd.

Usage::

    python benchmarks/loss_step.py --device cpu --heads both --threads 2 --scaling \
        --json docs/cpu_loss_step.json
    python benchmarks/loss_step.py --device cuda --heads both --scaling --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.provenance import provenance
from secu_plugin import SeCuCenterBank, SeCuLoss
from secu_plugin.core.per_head import PerHeadSeCuLoss

try:
    from lightly.loss import SwaVLoss
    from lightly.models.modules import SwaVPrototypes
except ImportError:  # the GPU machine may not have lightly
    SwaVLoss = SwaVPrototypes = None

HEADS = {
    "cifar": list(range(10, 101, 10)),  # the paper's CIFAR heads, sum K = 550
    "imagenet": list(range(1000, 10001, 1000)),  # the paper's ImageNet heads, sum K = 55,000
}
NUM_INSTANCES = {"cifar": 50_000, "imagenet": 1_281_167}
IMAGENET_SIZE = 1_281_167
# 10 heads sized 1 : 2 : ... : 10: from 10 (the smallest head of sum K 550) to 10,000 centers.
SCALING_TOTAL_K = [550, 1_100, 5_500, 11_000, 27_500, 55_000]
SCALING_BATCH = [64, 128, 256, 512, 1024]
FORMS = ("baseline", "fused", "swav", "floor")

Step = Callable[[], None]


def scaled_heads(total: int, num_heads: int = 10) -> list[int]:
    """``num_heads`` heads of sizes proportional to 1, 2, ..., num_heads summing to ~``total``."""
    weight = num_heads * (num_heads + 1) // 2
    return [max(2, round(total * (i + 1) / weight)) for i in range(num_heads)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Inputs:
    """Fixed features and a cycle of index batches (distinct within a batch)."""

    def __init__(
        self, batch: int, dim: int, num_views: int, num_instances: int, device: torch.device
    ) -> None:
        generator = torch.Generator().manual_seed(0)
        self.views = [
            torch.randn(batch, dim, generator=generator).to(device).requires_grad_()
            for _ in range(num_views)
        ]
        self.batches = [
            torch.randperm(num_instances, generator=generator)[:batch].to(device) for _ in range(8)
        ]
        self._next = 0

    def indices(self) -> torch.Tensor:
        self._next = (self._next + 1) % len(self.batches)
        return self.batches[self._next]

    def clear_grad(self) -> None:
        for view in self.views:
            view.grad = None


def secu_step(criterion: torch.nn.Module, inputs: Inputs) -> Step:
    """One step of a SeCu criterion (either form): forward, backward, gradients cleared."""
    bank = criterion.bank

    def step() -> None:
        loss = criterion(*inputs.views[:2], inputs.indices(), *inputs.views[2:])
        loss.backward()
        inputs.clear_grad()
        for center in bank.centers:
            center.grad = None

    return step


def swav_step(heads: Sequence[int], inputs: Inputs, device: torch.device) -> Step:
    """One step of lightly's SwaV on the same heads: two views, no queue, no multi-crop."""
    prototypes = SwaVPrototypes(inputs.views[0].shape[1], n_prototypes=list(heads)).to(device)
    criterion = SwaVLoss()
    z0, z1 = inputs.views[:2]

    def step() -> None:
        prototypes.normalize()
        out0 = prototypes(F.normalize(z0, dim=1))
        out1 = prototypes(F.normalize(z1, dim=1))
        loss = sum(criterion([a, b], []) for a, b in zip(out0, out1)) / len(heads)
        loss.backward()
        inputs.clear_grad()
        prototypes.zero_grad(set_to_none=True)

    step.module = prototypes  # for the state size
    return step


def floor_step(total_k: int, inputs: Inputs, device: torch.device) -> Step:
    """The three dense products of a SeCu step alone, into preallocated outputs."""
    generator = torch.Generator().manual_seed(1)
    flat = torch.cat([view.detach() for view in inputs.views])
    dim = flat.shape[1]
    centers = F.normalize(torch.randn(total_k, dim, generator=generator), dim=1).to(device)
    targets = F.normalize(torch.randn(total_k, dim, generator=generator), dim=1).to(device)
    similarity = flat.new_empty(flat.shape[0], total_k)
    logits = flat.new_empty(flat.shape[0], total_k)
    gradient = torch.empty_like(flat)

    def step() -> None:
        torch.mm(flat, centers.T, out=similarity)
        torch.mm(flat, targets.T, out=logits)
        torch.mm(logits, targets, out=gradient)

    return step


def state_bytes(step: Step, bank: SeCuCenterBank | None) -> int:
    module = bank if bank is not None else getattr(step, "module", None)
    if module is None:
        return 0
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def time_steps(
    steps: dict[str, Step], device: torch.device, repeats: int, warmup: int, rounds: int = 1
) -> dict[str, list[float]]:
    """Per form, the median seconds per step of each round: the forms interleaved step by step,
    the order rotating each step."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    medians: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        times: dict[str, list[float]] = {name: [] for name in names}
        for repeat in range(repeats):
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                synchronize(device)
                start = time.perf_counter()
                steps[name]()
                synchronize(device)
                times[name].append(time.perf_counter() - start)
        for name, values in times.items():
            medians[name].append(statistics.median(values))
    return medians


def peak_memory(steps: dict[str, Step], device: torch.device) -> dict[str, float]:
    """MiB allocated during one step of each form above what was resident before it (CUDA)."""
    peaks = {}
    for name, step in steps.items():
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        peaks[name] = (torch.cuda.max_memory_allocated(device) - resident) / 2**20
    return peaks


def compare_forms(
    name: str, heads: list[int], args: argparse.Namespace, device: torch.device
) -> dict:
    """Times the three forms on one set of heads; returns a row of the table."""
    num_views = 4 if args.predictor else 2
    num_instances = args.num_instances or NUM_INSTANCES[name]
    inputs = Inputs(args.batch, args.dim, num_views, num_instances, device)
    torch.manual_seed(0)
    bank = SeCuCenterBank(args.dim, heads, num_instances).to(device)
    bank.start_epoch()
    baseline_bank = copy.deepcopy(bank)
    steps: dict[str, Step] = {
        "baseline": secu_step(PerHeadSeCuLoss(baseline_bank), inputs),
        "fused": secu_step(SeCuLoss(bank), inputs),
    }
    if SwaVPrototypes is not None and args.swav:
        steps["swav"] = swav_step(heads, inputs, device)
    steps["floor"] = floor_step(sum(heads), inputs, device)
    rounds = time_steps(steps, device, args.repeats, args.warmup, args.rounds)
    seconds = {form: statistics.median(values) for form, values in rounds.items()}
    row = {
        "heads": name,
        "num_clusters": heads,
        "batch": args.batch,
        "views": num_views,
        "ms": {form: 1e3 * value for form, value in seconds.items()},
        "ms_rounds": {form: [1e3 * v for v in values] for form, values in rounds.items()},
        "ms_min": {form: 1e3 * min(values) for form, values in rounds.items()},
        "ms_max": {form: 1e3 * max(values) for form, values in rounds.items()},
        "fused/baseline": seconds["fused"] / seconds["baseline"],
        "fused/swav": seconds["fused"] / seconds["swav"] if "swav" in seconds else None,
        "baseline/swav": seconds["baseline"] / seconds["swav"] if "swav" in seconds else None,
        "fused/floor": seconds["fused"] / seconds["floor"],
        "swav/floor": seconds["swav"] / seconds["floor"] if "swav" in seconds else None,
        "state_mib": {
            form: state_bytes(step, {"baseline": baseline_bank, "fused": bank}.get(form)) / 2**20
            for form, step in steps.items()
            if form != "floor"
        },
    }
    if device.type == "cuda":
        row["step_peak_mib"] = peak_memory(steps, device)
    return row


def scaling(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Fused step time against total K (batch fixed) and against the batch (ImageNet heads)."""
    num_views = 4 if args.predictor else 2
    num_instances = args.num_instances or IMAGENET_SIZE
    cases = [("total K", args.batch, scaled_heads(total)) for total in args.scaling_k]
    cases += [("batch", batch, args.scaling_batch_heads) for batch in args.scaling_batch]
    rows = []
    for sweep, batch, heads in cases:
        inputs = Inputs(batch, args.dim, num_views, num_instances, device)
        torch.manual_seed(0)
        bank = SeCuCenterBank(args.dim, heads, num_instances).to(device)
        bank.start_epoch()
        steps = {
            "fused": secu_step(SeCuLoss(bank), inputs),
            "floor": floor_step(sum(heads), inputs, device),
        }
        rounds = time_steps(steps, device, args.scaling_repeats, args.warmup)
        seconds, floor = rounds["fused"][0], rounds["floor"][0]
        rows.append(
            {
                "sweep": sweep,
                "batch": batch,
                "num_clusters": heads,
                "total_k": sum(heads),
                "ms": 1e3 * seconds,
                "ns_per_bk": 1e9 * seconds / (batch * sum(heads)),
                "floor_ms": 1e3 * floor,
                "fused/floor": seconds / floor,
            }
        )
        del bank, steps, inputs
    return rows


def linear_fit(rows: list[dict]) -> tuple[float, float, float]:
    """Least-squares ``ms = a + b * (B * sum K)``: (a in ms, b in ns, largest relative residual)."""
    x = torch.tensor([float(r["batch"] * r["total_k"]) for r in rows], dtype=torch.float64)
    y = torch.tensor([r["ms"] for r in rows], dtype=torch.float64)
    design = torch.stack([torch.ones_like(x), x], dim=1)
    a, b = torch.linalg.lstsq(design, y.unsqueeze(1)).solution.squeeze(1).tolist()
    residual = ((a + b * x - y).abs() / y).max().item()
    return a, b * 1e6, residual


def bank_memory(num_instances: int = IMAGENET_SIZE, dim: int = 128) -> dict:
    """Memory of an ImageNet bank: its assignment memory is allocated, its centers are not.

    The bank is built with ``dim = 1`` (the memory does not depend on it) and the size of the
    centers and targets at ``dim`` is computed from their shapes.
    """
    bank = SeCuCenterBank(1, HEADS["imagenet"], num_instances)
    memory = bank.memory.numel() * bank.memory.element_size()
    rest = 0
    for name, tensor in list(bank.named_parameters()) + list(bank.named_buffers()):
        if name != "memory":  # centers and targets are (K, dim): scale them to ``dim``
            rest += tensor.numel() * tensor.element_size() * (dim if tensor.ndim == 2 else 1)
    return {
        "num_instances": num_instances,
        "num_heads": bank.num_heads,
        "dtype": str(bank.memory.dtype),
        "bytes_per_instance_and_head": bank.memory.element_size(),
        "memory_mb": memory / 1e6,
        "centers_targets_counts_duals_mb": rest / 1e6,
    }


def environment(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line]
        info["cpu"] = names[0] if names else info["cpu"]
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _ratio(row: dict, key: str) -> str:
    return f"{row[key]:.2f}x" if row[key] is not None else "-"


def print_tables(results: dict) -> None:
    env = results["environment"]
    print(f"\n## SeCu loss step ({env['device']}, torch {env['torch']}, {env['threads']} threads)")
    print(f"CPU: {env['cpu']}" + (f"; GPU: {env['gpu']}" if "gpu" in env else ""))
    print("Median ms per step (forward with assignment and state update, backward).\n")
    print(f"Load average at the start: {results['provenance']['load_average']}\n")
    header = "| heads | sum K | B | views | baseline ms | fused ms | SwaV ms | floor ms "
    header += "| fused/baseline | fused/SwaV | baseline/SwaV | fused/floor |"
    cuda = any("step_peak_mib" in row for row in results["forms"])
    if cuda:
        header += " peak MiB base/fused/SwaV |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for row in results["forms"]:
        ms = row["ms"]
        swav = f"{ms['swav']:.2f}" if "swav" in ms else "skipped"

        line = (
            f"| {row['heads']} | {sum(row['num_clusters'])} | {row['batch']} | {row['views']} "
            f"| {ms['baseline']:.2f} | {ms['fused']:.2f} | {swav} | {ms['floor']:.2f} "
            f"| {_ratio(row, 'fused/baseline')} | {_ratio(row, 'fused/swav')} "
            f"| {_ratio(row, 'baseline/swav')} | {_ratio(row, 'fused/floor')} |"
        )
        if cuda:
            peaks = row["step_peak_mib"]
            line += " " + "/".join(f"{peaks[f]:.0f}" if f in peaks else "-" for f in FORMS) + " |"
        print(line)
    if results.get("swav_skipped"):
        print(f"\n{results['swav_skipped']}")

    if results.get("scaling"):
        print("\n## Fused step against total K and batch (ImageNet-like heads)\n")
        print("| sweep | B | sum K | ms | ns per (B x sum K) | floor ms | fused/floor |")
        print("|---|---|---|---|---|---|---|")
        for row in results["scaling"]:
            print(
                f"| {row['sweep']} | {row['batch']} | {row['total_k']} | {row['ms']:.2f} "
                f"| {row['ns_per_bk']:.3f} | {row['floor_ms']:.2f} | {row['fused/floor']:.2f}x |"
            )
        for sweep, (a, b, residual) in results["scaling_fit"].items():
            print(
                f"\nLinear fit over the {sweep} sweep: ms = {a:.2f} + {b:.3f} ns x (B x sum K); "
                f"largest relative residual {100 * residual:.1f}%"
            )

    memory = results["bank_memory"]
    print(
        f"\n## Bank memory, N = {memory['num_instances']:,}, {memory['num_heads']} heads\n"
        f"assignment memory: {memory['dtype']}, {memory['bytes_per_instance_and_head']} bytes "
        f"per instance and head, {memory['memory_mb']:.1f} MB in all (centers, targets, counts "
        f"and duals of the ImageNet heads: {memory['centers_targets_counts_duals_mb']:.1f} MB)"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--heads", default="both", choices=["cifar", "imagenet", "both"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per form and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --repeats steps")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per form")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--predictor", action="store_true", help="the ImageNet form: p0, p1 too (SwaV: 2 views)"
    )
    parser.add_argument("--no-swav", dest="swav", action="store_false", help="skip SwaV")
    parser.add_argument("--num-instances", type=int, default=None, help="bank size N")
    parser.add_argument("--scaling", action="store_true", help="fused time vs total K and batch")
    parser.add_argument("--scaling-repeats", type=int, default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: a few seconds")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.repeats = args.repeats or (30 if cuda else 10)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 2)
    args.scaling_repeats = args.scaling_repeats or (20 if cuda else 5)
    args.scaling_k = SCALING_TOTAL_K
    args.scaling_batch = SCALING_BATCH
    args.scaling_batch_heads = HEADS["imagenet"]
    if args.smoke:
        args.batch, args.repeats, args.warmup, args.scaling_repeats = 16, 2, 1, 2
        args.rounds = min(args.rounds, 2)
        args.num_instances = args.num_instances or 2048
        args.scaling_k, args.scaling_batch = [100, 200], [8, 16]
        args.scaling_batch_heads = scaled_heads(200)
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = ["cifar", "imagenet"] if args.heads == "both" else [args.heads]
    heads = {name: HEADS[name] for name in names}
    if args.smoke:
        heads = {name: [max(2, k // 10) for k in value] for name, value in heads.items()}

    results: dict = {
        "provenance": provenance(),  # first: the load average before the run
        "role": "speed only: no data set, nothing tuned on it",
        "environment": environment(device),
        "args": vars(args).copy(),
    }
    results["args"]["json"] = str(args.json) if args.json else None
    if SwaVPrototypes is None and args.swav:
        results["swav_skipped"] = "lightly not installed: SwaV column skipped"
        print(results["swav_skipped"], flush=True)
    results["forms"] = [compare_forms(name, value, args, device) for name, value in heads.items()]
    if args.scaling:
        results["scaling"] = scaling(args, device)
        results["scaling_fit"] = {
            sweep: linear_fit([r for r in results["scaling"] if r["sweep"] == sweep])
            for sweep in ("total K", "batch")
        }
    results["bank_memory"] = bank_memory()
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print_tables(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()

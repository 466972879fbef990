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
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import device_environment, start_record, write_json
from benchmarks.loss_forms import (
    Inputs,
    Step,
    SwaVPrototypes,
    floor_step,
    peak_memory,
    secu_step,
    state_bytes,
    swav_step,
    time_steps,
)
from benchmarks.loss_step_report import linear_fit, print_tables
from secu_plugin import SeCuCenterBank, SeCuLoss
from secu_plugin.core.per_head import PerHeadSeCuLoss

HEADS = {
    "cifar": list(range(10, 101, 10)),  # the paper's CIFAR heads, sum K = 550
    "imagenet": list(range(1000, 10001, 1000)),  # the paper's ImageNet heads, sum K = 55,000
}
NUM_INSTANCES = {"cifar": 50_000, "imagenet": 1_281_167}
IMAGENET_SIZE = 1_281_167
# 10 heads sized 1 : 2 : ... : 10: from 10 (the smallest head of sum K 550) to 10,000 centers.
SCALING_TOTAL_K = [550, 1_100, 5_500, 11_000, 27_500, 55_000]
SCALING_BATCH = [64, 128, 256, 512, 1024]


def scaled_heads(total: int, num_heads: int = 10) -> list[int]:
    """``num_heads`` heads of sizes proportional to 1, 2, ..., num_heads summing to ~``total``."""
    weight = num_heads * (num_heads + 1) // 2
    return [max(2, round(total * (i + 1) / weight)) for i in range(num_heads)]


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

    results = start_record(  # first: the load average before the run
        role="speed only: no data set, nothing tuned on it",
        environment=device_environment(device),
        args=vars(args).copy(),
    )
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
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()

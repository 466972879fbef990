"""Process-level settings of a training run: CPU threads, and a check that ranks agree."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch

from secu_plugin.core import dist


def use_cpu_cores(accelerator) -> int:
    """On CPU, gives each local process its share of the cores; returns the thread count.

    A bare ``accelerate launch`` on a machine without GPU sets OMP_NUM_THREADS=1, which runs
    the demo at about 60% of the speed of two threads on two cores. ``SECU_NUM_THREADS``
    overrides the choice. On an accelerator nothing changes.

    Examples:
        >>> from accelerate import Accelerator
        >>> use_cpu_cores(Accelerator(cpu=True)) >= 1
        True
    """
    if accelerator.device.type != "cpu":
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    threads = int(os.environ.get("SECU_NUM_THREADS", "0")) or max(
        1, (cores or 1) // local_processes
    )
    torch.set_num_threads(threads)
    return threads


def check_launch(accelerator) -> None:
    """Refuses a launch whose processes do not form one run.

    ``accelerate launch --multi_gpu --num_processes N`` on a machine without GPUs starts N
    processes that each believe they are alone (N separate runs writing the same files) unless
    the CPU flag is set.

    Examples:
        >>> from accelerate import Accelerator
        >>> check_launch(Accelerator(cpu=True))  # one process, as launched
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ValueError(
            f"{launched} processes were launched but Accelerate runs {accelerator.num_processes}: "
            "without GPUs set the CPU flag (ACCELERATE_USE_CPU=1, or use_cpu: true in the "
            "accelerate config) next to --multi_gpu"
        )


def ranks_hold_identical_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether every process holds exactly the same ``state`` (what the ranks must share,
    such as a bank's :meth:`~secu_plugin.core.state.BankState.shared_state`: a sharded
    memory differs by design). A collective: every process calls it.

    Examples:
        >>> from secu_plugin import SeCuCenterBank
        >>> bank = SeCuCenterBank(dim=4, num_clusters=[3], num_instances=5, memory="sharded")
        >>> ranks_hold_identical_state(bank.shared_state())
        True
    """
    if not state:
        raise ValueError("ranks_hold_identical_state needs at least one tensor")
    values = list(state.values())
    flat = torch.cat([t.detach().double().flatten().cpu() for t in values])
    weights = torch.arange(len(flat), dtype=torch.float64)
    digest = torch.stack([flat.sum(), (flat * weights).sum()])
    gathered = dist.gather_rows(digest.to(values[0].device).unsqueeze(0))
    return bool((gathered == gathered[0]).all())


def run_or_exit(main: Callable[[Any], Any], args: Any) -> Any:
    """Runs a recipe's ``main(args)``; a user mistake (ValueError) or a failed write (OSError)
    ends in one ``error:`` line on stderr and exit code 2, the traceback only with
    ``args.debug`` or ``SECU_DEBUG=1``.

    Examples:
        >>> run_or_exit(lambda args: args * 2, 21)
        42
    """
    try:
        return main(args)
    except (ValueError, OSError) as error:
        if getattr(args, "debug", False) or os.environ.get("SECU_DEBUG") == "1":
            raise
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)

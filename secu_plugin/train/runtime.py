"""Process-level settings of a training run: CPU threads, a check that ranks agree, and the
exit path every recipe shares (which also tells a benchmark the project modules it ran)."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from secu_plugin.core import dist

# A benchmark sets this to a folder: each recipe process writes there the project modules it
# imported, so the figure's JSON can say which code it measured (benchmarks/common.py).
MODULES_FOLDER_VARIABLE = "SECU_RECORD_MODULES"
PROJECT_PACKAGES = ("secu_plugin", "recipes", "benchmarks")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


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
    finally:  # a failed run ran the same code: its modules count too
        record_imported_modules()


def project_modules() -> list[str]:
    """The sorted names of the project's modules (under ``secu_plugin``, ``recipes`` or
    ``benchmarks``) this process imported; a script run by its path (``__main__``) or a
    sibling imported by a bare name is named by its file's place in the repository.

    Examples:
        >>> "secu_plugin.train.runtime" in project_modules()
        True
    """
    found = set()
    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] in PROJECT_PACKAGES:
            found.add(name)
            continue
        file = getattr(module, "__file__", None)
        path = Path(file).resolve() if file else None
        if path is None or not path.is_relative_to(PROJECT_ROOT) or path.suffix != ".py":
            continue
        parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
        if parts[0] in PROJECT_PACKAGES:
            found.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(found)


def record_imported_modules() -> Path | None:
    """Writes :func:`project_modules` to a new file in the folder that
    ``SECU_RECORD_MODULES`` names (one file per process: ranks and runs do not overwrite each
    other) and returns it; None when the variable is unset (a run outside a benchmark).

    Examples:
        >>> import tempfile
        >>> os.environ["SECU_RECORD_MODULES"] = tempfile.mkdtemp()
        >>> "secu_plugin.train.runtime" in record_imported_modules().read_text().split()
        True
        >>> del os.environ["SECU_RECORD_MODULES"]
        >>> record_imported_modules() is None
        True
    """
    folder = os.environ.get(MODULES_FOLDER_VARIABLE)
    if not folder:
        return None
    try:
        with tempfile.NamedTemporaryFile(
            "w", dir=folder, prefix="modules-", suffix=".txt", delete=False
        ) as file:
            file.write("".join(f"{name}\n" for name in project_modules()))
    except OSError as error:  # the benchmark's record loses a detail; the run goes on
        print(f"warning: modules not recorded in {folder}: {error}", file=sys.stderr)
        return None
    return Path(file.name)

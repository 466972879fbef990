"""What a training run says about itself each epoch: loss, cluster sizes, how many
assignments changed, and (labelled data) the memory's ACC; plus the run's final JSON line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from secu_plugin.core import SeCuCenterBank
from secu_plugin.metrics import cluster_accuracy
from secu_plugin.train.evaluation import evaluation_head, has_informative_labels


class EpochReport:
    """Per-epoch health of a SeCu run, from the bank's assignment memory.

    Call :meth:`start` at the start of an epoch (it keeps a copy of the memory: 2 bytes per
    image and head, saved with checkpoints) and :meth:`summarize` at its end. The share of images whose label changed
    tells whether the clustering is settling; a run whose steadiest head still reassigns most
    images after several epochs is not learning, and the report says so.

    Examples:
        >>> bank = SeCuCenterBank(dim=2, num_clusters=[2], num_instances=4)
        >>> report = EpochReport(labels=np.array([0, 0, 1, 1]))
        >>> bank.memory[0] = torch.tensor([0, 0, 1, 1], dtype=bank.memory.dtype)
        >>> report.start(bank)
        >>> bank.memory[0] = torch.tensor([1, 1, 0, 0], dtype=bank.memory.dtype)
        >>> stats = report.summarize(bank)
        >>> stats["changed"], stats["memory_accuracy"], stats["sizes"]
        (1.0, 1.0, [[2, 2]])
    """

    # A settled run reassigns a few percent of its images per epoch at the end (the demo:
    # 1.7%); above this share in its last epoch the clusters are still moving.
    SETTLED_SHARE = 0.10

    def __init__(self, labels: np.ndarray | None = None, patience: int = 5) -> None:
        self.labels = labels if has_informative_labels(labels) else None
        self.patience = patience
        self._previous: torch.Tensor | None = None
        self._unsettled_epochs = 0
        self.last_changed: float | None = None  # the share changed in the last epoch

    def start(self, bank: SeCuCenterBank) -> None:
        """Remembers the memory at the start of the epoch."""
        self._previous = bank.memory.detach().clone()

    def state_dict(self) -> dict:
        """The memory at the epoch start, so that a resumed epoch reports the same figures."""
        return {
            "previous": self._previous,
            "unsettled_epochs": self._unsettled_epochs,
            "last_changed": self.last_changed,
        }

    def load_state_dict(self, state: dict) -> None:
        self._previous = state["previous"]
        self._unsettled_epochs = int(state["unsettled_epochs"])
        self.last_changed = state.get("last_changed")  # absent from older checkpoints

    def advice(self) -> str | None:
        """What to try when a finished from-scratch run has not settled (its steadiest head
        still reassigned more than :attr:`SETTLED_SHARE` of the images in the last epoch):
        such clusters are weak, and a pretrained backbone usually does better. ``None`` for a
        settled run.

        Examples:
            >>> report = EpochReport()
            >>> report.last_changed = 0.02
            >>> report.advice() is None
            True
            >>> report.last_changed = 0.35
            >>> report.advice().split(":")[0]
            'even the steadiest head reassigned 35% of the images in the last epoch'
        """
        if self.last_changed is None or self.last_changed <= self.SETTLED_SHARE:
            return None
        return (
            f"even the steadiest head reassigned {100 * self.last_changed:.0f}% of the images in the "
            "last epoch: the clusters have not settled. For images like these, SeCu heads on "
            "a pretrained backbone's features (recipes/train_head.py) usually cluster better "
            "and faster; see the README, 'Which path for your images'"
        )

    def summarize(self, bank: SeCuCenterBank) -> dict:
        """Cluster sizes per head, the share of assigned images whose label changed this
        epoch (the steadiest head's: :meth:`steadiest_head`), the memory's ACC where labels
        exist, and a warning once even that head keeps reassigning most images."""
        memory = bank.memory.detach()
        sizes = [s.tolist() for s in bank.cluster_sizes()]
        stats: dict = {"sizes": sizes}
        steadiest = self.steadiest_head(memory)
        if steadiest is not None:  # not in the epoch that fills the memory
            head, stats["changed"] = steadiest
            self.last_changed = stats["changed"]
            # Random relabelling would change a share 1 - 1/K of the labels.
            chance = 1.0 - 1.0 / bank.num_clusters[head]
            self._unsettled_epochs = (
                self._unsettled_epochs + 1 if stats["changed"] > 0.9 * chance else 0
            )
            if self._unsettled_epochs >= self.patience:
                stats["warning"] = (
                    f"even the steadiest head (K={bank.num_clusters[head]}) has reassigned about "
                    f"as many images as chance would for {self._unsettled_epochs} epochs: the run "
                    "is not settling (try a lower lr, a larger batch or milder augmentations)"
                )
        # A sharded memory holds this rank's instances only: its changes are a fair sample,
        # its ACC would need every rank's labels (gathering them defeats sharding).
        if self.labels is not None and not bank.memory_sharded:
            head = evaluation_head(bank.num_clusters, int(self.labels.max()) + 1)
            stats["memory_head"] = bank.num_clusters[head]
            assigned = memory[head].long().cpu().numpy()
            truth = np.where(assigned >= 0, self.labels, -1)  # unassigned images left out
            stats["memory_accuracy"] = cluster_accuracy(truth, np.maximum(assigned, 0))
        return stats

    def steadiest_head(self, memory: torch.Tensor) -> tuple[int, float] | None:
        """The head (index) that reassigned the smallest share of its images since
        :meth:`start`, and that share; ``None`` before any image was assigned. A run has
        settled when one head has: a K far from the data's (K=2 on ten classes) keeps moving
        images between equally good splits while the right one stays put.

        Examples:
            >>> report = EpochReport()
            >>> report._previous = torch.tensor([[0, 1, 0, 1], [0, 0, 1, 1]])
            >>> report.steadiest_head(torch.tensor([[1, 0, 1, 0], [0, 0, 1, 2]]))
            (1, 0.25)
        """
        if self._previous is None:
            return None
        seen = self._previous >= 0
        counts = seen.sum(1)
        if not counts.any():
            return None
        changed = ((self._previous != memory) & seen).sum(1) / counts.clamp_min(1)
        changed[counts == 0] = float("inf")
        head = int(changed.argmin())
        return head, float(changed[head])

    @staticmethod
    def line(epoch: int, mean_loss: float, stats: dict, num_clusters: list[int]) -> str:
        """One log line of :meth:`summarize`'s figures.

        Examples:
            >>> EpochReport.line(3, 1.5, {"sizes": [[2, 2]], "changed": 0.25}, [2])
            'epoch 3: loss 1.5000 | cluster size min/max K=2:2/2 | changed 25.0%'
        """
        sizes = " ".join(f"K={k}:{min(s)}/{max(s)}" for k, s in zip(num_clusters, stats["sizes"]))
        line = f"epoch {epoch}: loss {mean_loss:.4f} | cluster size min/max {sizes}"
        if "changed" in stats:
            line += f" | changed {100 * stats['changed']:.1f}%"
        if "memory_accuracy" in stats:
            line += f" | memory ACC (K={stats['memory_head']}) {stats['memory_accuracy']:.4f}"
        if "warning" in stats:
            line += f"\nwarning: {stats['warning']}"
        return line


def dataset_names(data: str) -> tuple[str, str | None]:
    """``(name, hub_id)`` of a recipe's ``--data`` for the model card: a local folder by its
    name, never its path; a Hub data set by its id (the only one with a ``hub_id``).

    Examples:
        >>> dataset_names("mnist5k"), dataset_names("uoft-cs/cifar10")
        (('mnist5k', None), ('uoft-cs/cifar10', 'uoft-cs/cifar10'))
    """
    local = data == "mnist5k" or os.path.exists(data)
    return (Path(data).name, None) if local else (data, data)


def result_metrics(results: dict) -> dict[str, float]:
    """The figures of a run's final line: ``accuracy``/``nmi``/``ari`` of the predictions and
    ``memory_``-prefixed ones of the training memory (nothing without labels).

    Examples:
        >>> result_metrics({"evaluations": [{"assignment": "memory", "accuracy": 0.9,
        ...                                   "nmi": 0.8, "ari": 0.7}]})
        {'memory_accuracy': 0.9, 'memory_nmi': 0.8, 'memory_ari': 0.7}
    """
    metrics = {}
    for evaluation in results.get("evaluations", []):
        prefix = "" if evaluation["assignment"] == "predict" else "memory_"
        metrics.update({prefix + m: evaluation[m] for m in ("accuracy", "nmi", "ari")})
    return metrics


def summary_line(summary: dict) -> str:
    """The one JSON line a run ends with, floats rounded to 4 digits.

    Examples:
        >>> summary_line({"accuracy": 0.912345, "epochs": 2})
        '{"accuracy": 0.9123, "epochs": 2}'
    """
    return json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()})


class StepLogger:
    """Per-step loss and learning rates for Accelerate's trackers, read back in batches.

    Reading a loss back every step would make a GPU wait every step; the values stay on the
    device and go to ``accelerator.log`` every ``every`` steps (and at :meth:`flush`), each
    with its own step number.

    Examples:
        >>> from accelerate import Accelerator
        >>> logger = StepLogger(Accelerator(cpu=True), every=2)
        >>> logger.log(1, torch.tensor(0.5), {"encoder": 0.1})
        >>> logger.log(2, torch.tensor(0.25), {"encoder": 0.1})  # sent to the trackers
        >>> logger.pending
        0
    """

    def __init__(self, accelerator, every: int = 20) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1 step, got {every}")
        self.accelerator = accelerator
        self.every = every
        self._steps: list[int] = []
        self._losses: list[torch.Tensor] = []
        self._lrs: list[dict[str, float]] = []

    @property
    def pending(self) -> int:
        """Steps recorded and not yet sent."""
        return len(self._steps)

    def log(self, step: int, loss: torch.Tensor, lrs: dict[str, float]) -> None:
        self._steps.append(step)
        self._losses.append(loss.detach().float())
        self._lrs.append(dict(lrs))
        if len(self._steps) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self._steps:
            return
        losses = torch.stack(self._losses).tolist()  # one read-back for the whole batch
        for step, loss, lrs in zip(self._steps, losses, self._lrs):
            values = {"train/loss": loss, **{f"lr/{name}": lr for name, lr in lrs.items()}}
            self.accelerator.log(values, step=step)
        self._steps, self._losses, self._lrs = [], [], []


def epoch_metrics(stats: dict, num_clusters: list[int], mean_loss: float) -> dict[str, float]:
    """The figures of :meth:`EpochReport.summarize` as flat tracker values.

    Examples:
        >>> epoch_metrics({"sizes": [[1, 3]], "changed": 0.5}, [2], 1.25)
        {'epoch/loss': 1.25, 'epoch/changed': 0.5, 'clusters/K2/min': 1, 'clusters/K2/max': 3}
    """
    values: dict[str, float] = {"epoch/loss": mean_loss}
    for name in ("changed", "memory_accuracy"):
        if name in stats:
            values[f"epoch/{name}"] = stats[name]
    for k, sizes in zip(num_clusters, stats["sizes"]):
        values[f"clusters/K{k}/min"] = min(sizes)
        values[f"clusters/K{k}/max"] = max(sizes)
    return values


def tracker_config(preset_dict: dict) -> dict:
    """A preset as tracker hyper-parameters: scalars kept, lists and None as text.

    Examples:
        >>> tracker_config({"lr": 0.2, "num_clusters": [10, 20], "mean": None})
        {'lr': 0.2, 'num_clusters': '[10, 20]', 'mean': 'None'}
    """
    return {
        key: value if isinstance(value, (int, float, str, bool)) else str(value)
        for key, value in preset_dict.items()
    }

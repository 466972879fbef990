"""What the training recipes share around their loops, so that each recipe is its loop.

``recipes/train.py`` (from scratch), ``recipes/train_head.py`` (heads on a frozen backbone) and
``recipes/finetune.py`` (the last stages of a frozen-head model) all: turn the command line
into setting overrides; start an Accelerate run (output folder, trackers, threads, seed);
resume from a checkpoint; close each epoch (report line, tracker values, the bank's epoch end,
checkpoint); find the evaluation split; export (the model
directory, results.json, figures) and end with one JSON line. :class:`RecipeRun` holds that;
:func:`open_feature_cache` is the frozen recipe's cache, for its training and evaluation
splits. Each recipe keeps its own loop and its own Accelerate calls (``prepare``,
``register_for_checkpointing``, ``skip_first_batches``, ``unwrap_model``, ``accumulate``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed

from secu_plugin.baselines import ceiling_headline, kmeans_baseline, report_ceiling
from secu_plugin.core import SeCuCenterBank
from secu_plugin.data import ImageDataset
from secu_plugin.data.files import check_output_outside_data
from secu_plugin.model_selection import head_selection
from secu_plugin.train.checkpoint import TrainProgress, resume_checkpoint, save_checkpoint
from secu_plugin.train.evaluation import evaluate_predictions
from secu_plugin.train.memory_shards import MemoryShards
from secu_plugin.train.pixel_check import (
    backbone_features,
    compare_with_pixel_kmeans,
    final_line_fields,
    verdict,
)
from secu_plugin.train.report import (
    EpochReport,
    dataset_names,
    epoch_metrics,
    result_metrics,
    tracker_config,
)
from secu_plugin.train.run_files import write_run_files, write_run_report
from secu_plugin.train.runtime import check_launch, use_cpu_cores
from secu_plugin.train.settings import RunSettings, parse_overrides

if TYPE_CHECKING:
    from secu_plugin.models import SeCuModel


def command_line_overrides(args: argparse.Namespace, flags: tuple[str, ...]) -> dict:
    """The settings a command line changes: its ``--set name=value`` items, then the
    recipe's own ``flags`` (``--epochs 3`` is ``--set epochs=3``) where given.

    Examples:
        >>> args = argparse.Namespace(set=["lr=0.1"], epochs=3, data=None)
        >>> command_line_overrides(args, ("data", "epochs"))
        {'lr': 0.1, 'epochs': 3}
    """
    overrides = parse_overrides(args.set)
    for name in flags:
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    return overrides


def read_images(data: str, split: str, args: argparse.Namespace) -> ImageDataset:
    """A split of ``data`` (a recipe's ``--data``), skipping unreadable images where
    ``--skip_corrupt`` asks for it."""
    return ImageDataset.from_source(data, split=split, skip_corrupt=args.skip_corrupt)


@dataclass
class RecipeRun:
    """One run of a recipe: its settings, command line, Accelerator and output directory.

    Examples:
        >>> import tempfile
        >>> from secu_plugin.train.presets import get_preset
        >>> args = argparse.Namespace(output_dir=tempfile.mkdtemp(), report_to="none", seed=0,
        ...                           resume=False, skip_corrupt=False, push_to_hub=None)
        >>> run = RecipeRun.start(args, get_preset("mnist5k"))
        >>> run.checkpoint_dir.is_dir(), run.accelerator.num_processes
        (True, 1)
    """

    settings: RunSettings
    args: argparse.Namespace
    accelerator: Accelerator
    output_dir: Path
    started: float
    memory_shards: MemoryShards | None = None  # set by checkpointed()
    # Each epoch's wall time in this process (a resumed run: the epochs it ran), for results.json
    epoch_seconds: list[float] = field(default_factory=list)
    results_written: bool = False  # this run wrote results.json (an old one is left alone)

    @classmethod
    def start(
        cls, args: argparse.Namespace, settings: RunSettings, gradient_accumulation_steps: int = 1
    ) -> RecipeRun:
        """Refuses an output directory inside the data folder, then sets up Accelerate:
        precision, devices and processes come from ``accelerate launch`` (or its config)."""
        started = time.time()
        output_dir = Path(args.output_dir or f"outputs/{settings.name}")
        check_output_outside_data(output_dir, settings.data)
        accelerator = Accelerator(
            # Whole global batches split over the processes, the last partial one dropped: 1
            # and N processes train on exactly the same batches (no padding rows trained
            # twice). The seedable sampler makes each epoch's shuffling a function of (seed,
            # epoch), so a resumed run visits the same batches as an uninterrupted one.
            dataloader_config=DataLoaderConfiguration(
                split_batches=True, use_seedable_sampler=True
            ),
            gradient_accumulation_steps=gradient_accumulation_steps,
            log_with=None if args.report_to == "none" else args.report_to,
            project_dir=output_dir / "logs",
        )
        check_launch(accelerator)
        use_cpu_cores(accelerator)
        set_seed(args.seed)
        run = cls(settings, args, accelerator, output_dir, started)
        if accelerator.is_main_process:
            run.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        return run

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def log(self, text: str) -> None:
        """Prints on the main process only."""
        self.accelerator.print(text)

    def checkpointed(self, bank: SeCuCenterBank, report: EpochReport) -> tuple:
        """The bank and the epoch report as ``register_for_checkpointing`` takes them: a
        sharded memory is then saved by every rank and resumed on any number of processes
        (:class:`~secu_plugin.train.memory_shards.MemoryShards`); a replicated one as before."""
        self.memory_shards = MemoryShards(bank, report)
        return self.memory_shards.registered

    def resume(self, progress: TrainProgress) -> None:
        """With ``--resume``: loads the newest checkpoint whose manifest verifies, the state
        registered for checkpointing included (``progress`` then says where it was), and the
        memory's shards of every rank, re-sharded for this number of processes."""
        if self.args.resume:
            state = resume_checkpoint(self.checkpoint_dir, self.log)
            self.accelerator.load_state(str(state))
            if self.memory_shards is not None:
                self.memory_shards.load(state)
            self.log(
                f"resumed from {state} (epoch {progress.epoch}, step {progress.step_in_epoch})"
            )

    def init_trackers(self) -> None:
        """Starts the trackers (``--report_to``) with every setting as a hyper-parameter."""
        config = tracker_config(self.settings.to_dict())
        self.accelerator.init_trackers(self.settings.name, config=config)

    def end_epoch(
        self,
        bank: SeCuCenterBank,
        report: EpochReport,
        progress: TrainProgress,
        epoch_started: float,
    ) -> None:
        """The end of an epoch: its report line and tracker values, the bank's epoch end,
        the next epoch's counters, and a checkpoint."""
        stats = report.summarize(bank)
        epoch, loss = progress.epoch, progress.epoch_mean_loss()
        line = EpochReport.line(epoch, loss, stats, bank.num_clusters)
        self.epoch_seconds.append(round(time.time() - epoch_started, 1))
        self.log(f"{line} | {self.epoch_seconds[-1]:.1f}s")
        values = epoch_metrics(stats, bank.num_clusters, loss)
        self.accelerator.log(values, step=progress.global_step)
        bank.end_epoch()
        progress.next_epoch()
        self.save_checkpoint(progress)

    def save_checkpoint(self, progress: TrainProgress) -> None:
        keep = getattr(self.args, "keep_checkpoints", 2)
        save_checkpoint(self.accelerator, self.checkpoint_dir, progress, keep, self.memory_shards)

    def training_record(self, **backbone: Any) -> dict:
        """The model's ``training`` record: every setting, ``backbone`` (where pretrained
        weights came from), the seed, the data and the command."""
        name, hub_id = dataset_names(self.settings.data)
        return {
            "preset": self.settings.to_dict(),
            **backbone,
            "seed": self.args.seed,
            "dataset": name,
            "dataset_id": hub_id,
            "command": shlex.join(["accelerate", "launch", *sys.argv]),
        }

    def evaluation_images(self, train_images: ImageDataset) -> ImageDataset:
        """The split a run is scored on: ``test`` (or ``val``) where the data has one, else
        the training images themselves (``split == "train"``: MNIST-5k, a plain folder)."""
        images = read_images(self.settings.data, "test", self.args)
        return train_images if images.split == "train" else images

    def export(
        self,
        model: SeCuModel,
        bank: SeCuCenterBank | None,
        train_images: ImageDataset,
        eval_images: ImageDataset,
        predictions: np.ndarray,
        labels: np.ndarray | None,
        projections: torch.Tensor,
        baseline_features: torch.Tensor | None = None,
        *,
        next_step: str,
        pooled_features: Callable[[np.ndarray], torch.Tensor] | None = None,
        ceiling: Callable[[int], dict] | None = None,
    ) -> dict:
        """Scores ``predictions`` (H, N) of ``eval_images`` and the bank's memory, then writes
        the model directory (card with the results), results.json, the cluster-size plot, a
        montage of the evaluation images by cluster and the HTML cluster report (from the
        evaluation images' ``projections`` (N, dim)); returns the figures of the final line.
        ``baseline_features``: k-means on them is the baseline (same head K, same labels).
        Every head's label-free K signal (:mod:`secu_plugin.model_selection`, on
        ``projections``) goes to the model's training record, results.json, the report and
        the final line, which names the recommended head. ``bank`` None (a fine-tuned model,
        trained without one): no memory to score, the cluster sizes are the predictions'.
        The run against k-means on the pixels (:mod:`secu_plugin.train.pixel_check`; without
        labels on the graph of ``pooled_features(rows)``, default the model's backbone) goes to
        the final line, results.json and the report; ``next_step``: the command it advises
        when the run is no better.
        ``ceiling``: called on the main process with the evaluated head's K when labels are
        known, returns the features' ceiling (:func:`secu_plugin.baselines.feature_ceiling`,
        or {}): into results.json, its headline into the final line and beside every head's
        score in the report.
        """
        data_name, hub_id = dataset_names(self.settings.data)
        num_clusters = model.num_clusters
        selection = head_selection(projections, predictions, num_clusters, seed=self.args.seed)
        model.training_recipe = {**(model.training_recipe or {}), "k_selection": selection}
        recommended, also = selection["recommended_num_clusters"], selection["also_plausible"]
        close = "" if also is None else f"; K={also} scores close to it: look at both"
        self.log(f"recommended head: K={recommended} (the highest {selection['signal']}{close})")
        results = evaluate_predictions(
            predictions,
            labels,
            num_clusters,
            data_name,
            split=eval_images.split,
            # One head's labels (sharded: gathered in chunks, a collective on every rank).
            memory=None
            if bank is None
            else lambda head: bank.memory_head_labels(head).long().cpu().numpy(),
            memory_labels=train_images.labels,
            dataset_id=hub_id,
        )
        metrics = result_metrics(results)
        baseline = {}
        if not results:
            self.log("the data has no class labels: no ACC/NMI/ARI reported")
        elif baseline_features is not None:
            k = results["evaluations"][0]["num_clusters"]
            scores = kmeans_baseline(baseline_features, labels, k, self.args.seed)
            baseline = {"kmeans_" + m: round(v, 4) for m, v in scores.items()}
        metrics.update(baseline)
        reference: dict = {}
        if results and ceiling is not None and self.accelerator.is_main_process:
            reference = ceiling(results["evaluations"][0]["num_clusters"])
            metrics.update(ceiling_headline(reference) if reference else {})
        if bank is None:
            sizes = [np.bincount(p, minlength=k) for p, k in zip(predictions, num_clusters)]
        else:
            sizes = [s.cpu().numpy() for s in bank.cluster_sizes()]  # sharded: every rank's part
        if self.accelerator.is_main_process:  # one process reads the pixels and runs k-means
            found = compare_with_pixel_kmeans(
                eval_images,
                predictions,
                num_clusters,
                selection["recommended_head"],
                labels,
                pooled_features or backbone_features(model, eval_images),
                next_step,
                seed=self.args.seed,
            )
            self.log(verdict(found))
            record = {**baseline, "pixel_check": found}
            record.update({"feature_ceiling": reference} if reference else {})
            push_to_hub = self.args.push_to_hub
            model.set_results(results or None)  # the card's results
            model.save_pretrained(self.output_dir / "model", repo_id=push_to_hub)
            write_run_files(
                self.output_dir, model, eval_images, predictions, results, record, sizes
            )
            self.results_written = True
            write_run_report(
                self.output_dir,
                model,
                eval_images,
                projections,
                labels,
                title=f"SeCu clusters of {self.settings.data}",
                feature_ceiling=report_ceiling(reference),
                notes=[note for note in (verdict(found), found.get("advice")) if note],
            )
            if push_to_hub:
                model.push_to_hub(push_to_hub)
            metrics.update(final_line_fields(found))
        return {
            **metrics,
            "recommended_num_clusters": recommended,
            "also_plausible": also,
            "model_dir": str(self.output_dir / "model"),
            "report": str(self.output_dir / "report" / "index.html"),
        }

    def update_results(self, **entries: Any) -> dict | None:
        """Adds ``entries`` to the results.json this run's export wrote (main process); returns
        the updated record, or None where there is none (another process, no export)."""
        results = self.output_dir / "results.json"
        if not (self.accelerator.is_main_process and self.results_written):
            return None
        record = {**json.loads(results.read_text()), **entries}
        if entries:
            results.write_text(json.dumps(record, indent=2))
        return record

    def finish(self, summary: dict) -> dict:
        """Ends the run on every process; returns ``summary`` with the time and the output.
        ``results.json`` (written by the export, before the end) gets the times too: the
        total, each epoch's and their median, and the recipe's ``seconds_*`` parts."""
        summary = {**summary, "seconds": round(time.time() - self.started, 1)}
        if summary.get("advice"):
            self.log(f"advice: {summary['advice']}")
        summary["output_dir"] = str(self.output_dir)
        self.update_results(
            seconds={
                "total": summary["seconds"],
                "epochs": self.epoch_seconds,
                "median_epoch": float(np.median(self.epoch_seconds))
                if self.epoch_seconds
                else None,
                **{
                    k.removeprefix("seconds_"): v
                    for k, v in summary.items()
                    if k.startswith("seconds_")
                },
            }
        )
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return summary

"""ACC / NMI / ARI of a trained SeCu model on a labelled data set.

    python recipes/evaluate.py --model outputs/mnist5k/model --data mnist5k
    accelerate launch recipes/evaluate.py --model org/secu-r50 --data /data/imagenet --split val

    python recipes/evaluate.py --checkpoint outputs/mnist5k/checkpoints --data mnist5k

Prints one JSON line: the head whose K equals the number of classes (SCAN's protocol). With
``--checkpoint`` it scores the training memory of a run's newest verified checkpoint instead
(its labels of the training images, replicated or sharded: one head, read shard by shard).
"""

import argparse
from pathlib import Path

from accelerate import Accelerator, PartialState

from secu_plugin import SeCuModel
from secu_plugin.data import ImageDataset
from secu_plugin.metrics import clustering_metrics
from secu_plugin.train.checkpoint import resume_checkpoint
from secu_plugin.train.evaluation import (
    evaluate_predictions,
    evaluation_head,
    has_informative_labels,
    predict_dataset,
)
from secu_plugin.train.memory_shards import checkpoint_bank_state, checkpoint_memory_head
from secu_plugin.train.report import summary_line
from secu_plugin.train.runtime import run_or_exit

parser = argparse.ArgumentParser(description="ACC / NMI / ARI of a trained SeCu model.")
source = parser.add_mutually_exclusive_group(required=True)
source.add_argument("--model", help="a model directory or a Hub id")
source.add_argument("--checkpoint", help="a run's checkpoints folder: score its training memory")
parser.add_argument("--data", default="mnist5k", help="mnist5k, a folder, parquet or Hub id")
parser.add_argument("--split", default="test", help="evaluation split (MNIST-5k has one)")
parser.add_argument("--batch_size", type=int, default=256)
parser.add_argument("--skip_corrupt", action="store_true")
parser.add_argument("--debug", action="store_true", help="full tracebacks for user errors")


def memory_scores(args: argparse.Namespace) -> dict:
    """ACC / NMI / ARI of the training memory in the newest verified checkpoint of a run."""
    folder = Path(args.checkpoint)
    checkpoint = resume_checkpoint(
        folder / "checkpoints" if (folder / "checkpoints").is_dir() else folder
    )
    state = checkpoint_bank_state(checkpoint)
    num_clusters = []
    while f"centers.{len(num_clusters)}" in state:
        num_clusters.append(int(state[f"centers.{len(num_clusters)}"].shape[0]))
    dataset = ImageDataset.from_source(args.data, split="train", skip_corrupt=args.skip_corrupt)
    if not has_informative_labels(dataset.labels) or not num_clusters:
        raise ValueError(f"--data {args.data!r} has no class labels, or {checkpoint} no centers")
    head = evaluation_head(num_clusters, int(dataset.labels.max()) + 1)
    memory = checkpoint_memory_head(checkpoint, head).long().numpy()
    if len(memory) != len(dataset):
        raise ValueError(
            f"{checkpoint} holds {len(memory)} labels, --data has {len(dataset)} images"
        )
    assigned = memory >= 0
    truth = dataset.labels.copy()
    truth[~assigned] = -1  # images not assigned yet are left out
    scores = clustering_metrics(truth, memory.clip(min=0))
    return {
        **scores,
        "num_clusters": num_clusters[head],
        "head": head,
        "num_images": int(assigned.sum()),
        "split": "train",
        "assignment": "memory",
        "checkpoint": str(checkpoint),
        "data": args.data,
    }


def main(args: argparse.Namespace) -> dict:
    if args.checkpoint:
        return memory_scores(args)
    accelerator = Accelerator()
    model = SeCuModel.from_pretrained(args.model).to(accelerator.device)
    dataset = ImageDataset.from_source(args.data, split=args.split, skip_corrupt=args.skip_corrupt)
    predictions, labels = predict_dataset(accelerator, model, dataset, args.batch_size)
    results = evaluate_predictions(
        predictions, labels, model.num_clusters, args.data, getattr(dataset, "split", args.split)
    )
    if not results:
        raise ValueError(f"--data {args.data!r} has no class labels to evaluate against")
    scores = results["evaluations"][0]
    return {
        **{
            m: scores[m]
            for m in ("accuracy", "nmi", "ari", "num_clusters", "head", "num_images", "split")
        },
        "model": args.model,
        "data": args.data,
    }


if __name__ == "__main__":
    summary = run_or_exit(main, parser.parse_args())
    if PartialState().is_main_process:
        print(summary_line(summary))

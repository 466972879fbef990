"""ACC / NMI / ARI of a trained SeCu model on a labelled data set.

    python recipes/evaluate.py --model outputs/mnist5k/model --data mnist5k
    accelerate launch recipes/evaluate.py --model org/secu-r50 --data /data/imagenet --split val

Prints one JSON line: the head whose K equals the number of classes (SCAN's protocol).
"""

import argparse

from accelerate import Accelerator, PartialState

from secu_plugin import SeCuModel
from secu_plugin.data import ImageDataset
from secu_plugin.train.evaluation import evaluate_predictions, predict_dataset
from secu_plugin.train.report import summary_line
from secu_plugin.train.runtime import run_or_exit

parser = argparse.ArgumentParser(description="ACC / NMI / ARI of a trained SeCu model.")
parser.add_argument("--model", required=True, help="a model directory or a Hub id")
parser.add_argument("--data", default="mnist5k", help="mnist5k, a folder, parquet or Hub id")
parser.add_argument("--split", default="test", help="evaluation split (MNIST-5k has one)")
parser.add_argument("--batch_size", type=int, default=256)
parser.add_argument("--skip_corrupt", action="store_true")
parser.add_argument("--debug", action="store_true", help="full tracebacks for user errors")


def main(args: argparse.Namespace) -> dict:
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

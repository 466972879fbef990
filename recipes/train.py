"""Train SeCu with Accelerate on any data set, one process or many.

    accelerate launch recipes/train.py                       # the CPU demo: MNIST-5k
    accelerate launch recipes/train.py --preset cifar10 --data uoft-cs/cifar10
    accelerate launch recipes/train.py --preset stl10 --data /data/stl10 --backbone resnet34

Ends with one JSON line: {"acc", "nmi", "ari", "epochs", "seconds", "output_dir", ...}.
"""

import argparse
import shlex
import sys

from secu_plugin.presets import PRESETS, get_preset, parse_overrides
from secu_plugin.training import RunOptions, print_summary, train


def parse_args(argv=None, default_preset="mnist5k"):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--preset", default=default_preset, choices=sorted(PRESETS))
    parser.add_argument("--data", help="mnist5k, an image folder, parquet files or a Hub data set")
    parser.add_argument("--output_dir", default=None, help="default: outputs/<preset>")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--backbone", help="any timm model name")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--push_to_hub", metavar="ORG/NAME", help="also push the model to the Hub")
    parser.add_argument("--max_steps", type=int, help="stop after this many steps (checkpointed)")
    parser.add_argument("--checkpoint_every", type=int, default=0, help="also checkpoint every N steps")
    parser.add_argument("--skip_corrupt", action="store_true", help="skip unreadable images")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="override any preset setting, e.g. --set lr=0.1 num_clusters=[10,20]")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set)
    for name in ("data", "epochs", "backbone"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    preset = get_preset(args.preset, **overrides)
    options = RunOptions(
        output_dir=args.output_dir or f"outputs/{preset.name}", resume=args.resume, seed=args.seed,
        push_to_hub=args.push_to_hub, max_steps=args.max_steps,
        checkpoint_every=args.checkpoint_every, skip_corrupt=args.skip_corrupt,
        command="accelerate launch " + shlex.join(sys.argv), progress=not args.no_progress,
    )
    return preset, options


def main(argv=None):
    preset, options = parse_args(argv)
    print_summary(train(preset, options))


if __name__ == "__main__":
    main()

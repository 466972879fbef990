"""Train SeCu on ImageNet with the paper's recipe (ResNet-50, LARS, 3-layer head + predictor).

    accelerate launch --mixed_precision bf16 --multi_gpu --num_processes 8 \\
        recipes/train_imagenet.py --data /data/imagenet
    accelerate launch recipes/train_imagenet.py --preset imagenet-entropy --data imagenet-1k

The loop is recipes/train.py's; this script only makes the `imagenet` preset the default.
Many nodes: Accelerate's multi-node launch (--num_machines, --machine_rank, --main_process_ip).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train import run  # the sibling script, found through the line above

if __name__ == "__main__":
    run(default_preset="imagenet", data_preset="imagenet")

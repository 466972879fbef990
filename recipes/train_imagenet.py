"""Train SeCu on ImageNet with the paper's recipe (ResNet-50, LARS, 3-layer head + predictor).

    accelerate launch --multi_gpu --num_processes 8 recipes/train_imagenet.py --data /data/imagenet
    accelerate launch recipes/train_imagenet.py --preset imagenet-entropy --data imagenet-1k

Many nodes: Accelerate's multi-node launch (--num_machines, --machine_rank, --main_process_ip).
"""

from secu_plugin.train.loop import recipe_main

if __name__ == "__main__":
    recipe_main(default_preset="imagenet")

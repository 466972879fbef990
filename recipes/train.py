"""Train SeCu with Accelerate on any data set, one process or many.

    accelerate launch recipes/train.py                       # the CPU demo: MNIST-5k
    accelerate launch recipes/train.py --preset cifar10 --data uoft-cs/cifar10
    accelerate launch recipes/train.py --preset stl10 --data /data/stl10 --backbone resnet34

Ends with one JSON line: {"acc", "nmi", "ari", "epochs", "seconds", "output_dir", ...}.
All logic lives in secu_plugin.train.loop; `--help` lists the flags.
"""

from secu_plugin.train.loop import recipe_main

if __name__ == "__main__":
    recipe_main(default_preset="mnist5k")

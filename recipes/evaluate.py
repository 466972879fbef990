"""ACC / NMI / ARI of a trained SeCu model on a labelled data set.

    python recipes/evaluate.py --model outputs/mnist5k/model --data mnist5k
    python recipes/evaluate.py --model org/secu-r50 --data /data/imagenet --split val

Prints one JSON line: the head whose K equals the number of classes (SCAN's protocol).
"""

from secu_plugin.train.evaluation import evaluate_main

if __name__ == "__main__":
    raise SystemExit(evaluate_main())

"""Algorithms on a frozen backbone's features: the heads' objectives, self-labeling,
fine-tuning from a frozen-head model, and what they share (the features cached once).

What belongs here: ``features`` (embedding a data set once into the feature cache, the
neighbours in it), ``head_presets`` (the frozen path's settings and presets),
``self_labeling`` (SCAN's last step on confident images), ``finetune`` (the fine-tuning
recipe's pieces) and ``finetune_presets`` (its settings and presets). The plain baselines
every path is compared with (k-means, spectral clustering, a linear probe) are in
:mod:`secu_plugin.baselines`, since training from scratch uses them too.

To add a head objective: one module here with one class whose ``loss`` takes plain tensors
(features or head outputs, and pairs) and returns a scalar, with a short runnable example in its
docstring; name it in the frozen path's settings so ``--set`` can choose it, and add it to the
benchmark of the frozen path (``benchmarks/frozen_heldout.py``). It may import ``core``,
``models``, ``data``, ``train`` and the tools; ``train`` never imports this package.
"""

"""Pieces the training recipes are built from: presets, optimizers and schedules,
checkpoints, evaluation and clustering metrics."""

"""Pieces the training recipes are built from: settings as data and the presets composed of
them, optimizers and schedules, checkpoints, evaluation and clustering metrics, and the
scaffold both recipes share around their loops."""

"""The training loop's plumbing: what every recipe's loop stands on, whatever it trains.

What belongs here: settings as data (``settings``) and the registries of values built from
them (``presets``, ``auto``), optimizers and schedules (``optim``), checkpoints and resume
(``checkpoint``, ``memory_shards``), process settings (``runtime``), the per-epoch report
(``report``), predictions and their scores (``evaluation``) and the scaffold the recipes share
around their loops (``scaffold``). Nothing here knows which objective a head is trained with.

To add a piece of plumbing (a tracker, a checkpoint format, a schedule): a module here that
imports ``core``, ``models``, ``data`` and the tools, never ``secu_plugin.frozen``; the recipes
call it. An algorithm that trains or scores heads on features goes to ``secu_plugin.frozen``.
"""

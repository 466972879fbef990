"""The SeCu loss: representation loss against frozen centers plus the stable center loss."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from secu_plugin.core import dist, fused_losses
from secu_plugin.core.bank import SeCuCenterBank
from secu_plugin.core.checks import (
    check_finite,
    check_index_range,
    check_step_inputs,
    flag_bad_values,
)
from secu_plugin.core.state import epoch_number


class SeCuLossTerms(NamedTuple):
    """The parts of one SeCu step, from :meth:`SeCuLoss.terms`.

    Examples:
        >>> bank = SeCuCenterBank(dim=4, num_clusters=[3], num_instances=8)
        >>> terms = SeCuLoss(bank).terms(torch.randn(2, 4), torch.randn(2, 4), torch.arange(2))
        >>> bool(torch.isclose(terms.loss, terms.representation_loss + terms.center_loss))
        True
        >>> terms.labels.shape
        torch.Size([1, 2])
    """

    loss: torch.Tensor
    """``representation_loss + center_loss``: what to back-propagate."""
    representation_loss: torch.Tensor
    """Cross-entropy of the features against the frozen targets, soft labels (no center grad)."""
    center_loss: torch.Tensor
    """Cluster discrimination loss; only each row's assigned center gets gradient."""
    labels: torch.Tensor
    """(num_heads, B) the clusters assigned to this rank's rows in this step."""


class SeCuLoss(nn.Module):
    """SeCu loss (Qian, "Stable Cluster Discrimination for Deep Clustering", ICCV 2023).

    Each call assigns the batch to the bank's centers under the bank's constraint, records the
    assignment (memory, counts, duals: identical on every rank under ``torch.distributed``),
    and returns the loss, averaged over heads and views:

    - representation loss: each view's projection, scored against the centers frozen at the
      start of the epoch (temperature ``temperature_x``), is trained towards the soft target
      ``(1 - label_weight) * softmax(other view) + label_weight * one_hot(stored label)``, where
      the stored label is the instance's label in the memory before this step (the previous
      epoch's), or the label assigned now when it has none yet;
    - center loss: cross-entropy of the similarities to the current centers (temperature
      ``temperature_c``) where only the assigned center's logit carries gradient, and the
      features none ("stable" cluster discrimination).

    With predictor outputs ``p0``, ``p1`` (the paper's ImageNet form), the assignment uses the
    mean of the four similarities, the center loss has four terms, and each view's target
    (from the other view's projection) trains both its projection and its prediction.

    The center gradient is averaged over ranks inside the loss; the encoder's, by DDP as usual.

    **When a call writes the bank.** A call records its assignment (memory, counts, duals) and
    follows ``epoch=`` only if it is a training step: ``update=True`` at construction (the
    default), the loss and the bank in training mode, and gradients enabled (not under
    ``torch.no_grad()`` or ``torch.inference_mode()``). A call's ``update=True`` or
    ``update=False`` overrides that rule. So a validation loss (Lightning runs
    ``validation_step`` in eval mode under inference mode) reads the bank and changes nothing.

    **Epochs.** ``epoch=e`` makes the bank switch epochs itself (:meth:`SeCuCenterBank.set_epoch`:
    a new number ends the previous epoch and freezes the targets, the same number does nothing),
    so no epoch hooks are needed; explicit ``start_epoch()`` / ``end_epoch()`` work as well.

    **Checks.** Shapes, dtypes and devices are checked on the host (ValueError, nothing
    changed). With ``check_values`` the values are checked too, and the default step never
    waits for the device (no host-device synchronization, also on CUDA; under
    ``torch.distributed`` the ranks' batch sizes are exchanged, one small read-back per step):

    - indices on the CPU (what a DataLoader yields) are range-checked on the host before they
      are copied (asynchronously) to the features' device: ValueError at once, nothing changed;
    - features on the CPU are checked at once (ValueError, nothing changed);
    - on an accelerator, non-finite features and indices already on the device (Lightning moves
      the whole batch there) are flagged on the device. The flags mask that step's update
      (``torch.where``: memory, counts and duals keep their values; out-of-range indices are
      clamped so that nothing is read out of bounds) and reach the host asynchronously; the
      ValueError, naming the bad input, is raised by the next recording call of the loss (which
      waits for an event of the bad step, not for the device's queue) or by
      ``bank.start_epoch()`` / ``bank.end_epoch()`` / an epoch switch, whichever comes first,
      before that call changes anything. Under ``torch.distributed`` every rank masks the step
      and raises (the flags travel with the labels). The gradients of a step with non-finite
      features are not finite either (AMP's GradScaler skips it; a plain optimizer step would
      write them into the centers before the error is raised).

    ``check_values="deferred"`` flags values on the device on a CPU too (what an accelerator
    does); ``False`` checks only shapes, dtypes and devices. Calls that do not record check
    values where that is free (host tensors) and nothing on an accelerator.

    Args:
        bank: The center bank holding centers and state.
        temperature_x: Temperature of the representation loss.
        temperature_c: Temperature of the center loss.
        label_weight: Weight of the stored one-hot label in the soft target.
        check_values: ``True``, ``"deferred"`` or ``False``: how indices and features are
            checked (above).
        update: Whether training steps record their assignment (``False``: a loss that only
            reads the bank, e.g. for validation).
        sync_center_gradients: Average the centers' gradient over ranks inside the loss. Needed
            when the bank is outside any DistributedDataParallel wrapper; when DDP already
            wraps it (a bank inside a DDP-wrapped model), ``False`` saves one all-reduce of the
            centers' gradient per step (``True`` gives the same gradient up to rounding).

    Examples:
        >>> bank = SeCuCenterBank(dim=16, num_clusters=[4, 8], num_instances=32)
        >>> criterion = SeCuLoss(bank)
        >>> bank.start_epoch()
        >>> z0 = torch.randn(8, 16, requires_grad=True)
        >>> z1 = torch.randn(8, 16, requires_grad=True)
        >>> loss = criterion(z0, z1, torch.arange(8))
        >>> loss.backward()
        >>> bank.end_epoch()
        >>> bool((bank.memory[:, :8] >= 0).all()), bool((bank.memory[:, 8:] == -1).all())
        (True, True)
    """

    def __init__(
        self,
        bank: SeCuCenterBank,
        temperature_x: float = 0.05,
        temperature_c: float = 0.05,
        label_weight: float = 0.2,
        check_values: bool | str = True,
        update: bool = True,
        sync_center_gradients: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(bank, SeCuCenterBank):
            raise ValueError(f"bank must be a SeCuCenterBank, got {type(bank).__name__}")
        if not (temperature_x > 0 and temperature_c > 0):
            raise ValueError(
                f"temperatures must be positive, got temperature_x={temperature_x}, "
                f"temperature_c={temperature_c}"
            )
        if not 0 <= label_weight <= 1:
            raise ValueError(f"label_weight must be in [0, 1], got {label_weight}")
        # The loss uses the bank but does not own it: the bank's owner (a model, a
        # LightningModule, a training script) saves, moves and optimizes it, and switches it
        # between train and eval. As a submodule it would be saved a second time in every
        # state_dict holding the loss (under ``criterion.bank.*``), moved by ``criterion.to()``
        # and put in eval mode by ``criterion.eval()`` (which must not stop a training bank).
        # So it is stored outside nn.Module's registries, behind the read-only ``bank``.
        object.__setattr__(self, "_bank", bank)
        self.temperature_x = float(temperature_x)
        self.temperature_c = float(temperature_c)
        self.label_weight = float(label_weight)
        if check_values not in (True, False, "deferred"):
            raise ValueError(
                f"check_values must be True, False or 'deferred', got {check_values!r}"
            )
        self.check_values = check_values
        self.update = bool(update)
        self.sync_center_gradients = bool(sync_center_gradients)
        self._workspace = fused_losses.Workspace()  # scratch space, not state

    @property
    def bank(self) -> SeCuCenterBank:
        """The center bank this loss reads and updates (not a submodule: see ``__init__``)."""
        return self._bank

    def forward(
        self,
        z0: torch.Tensor,
        z1: torch.Tensor,
        indices: torch.Tensor,
        p0: torch.Tensor | None = None,
        p1: torch.Tensor | None = None,
        *,
        epoch: int | None = None,
        update: bool | None = None,
    ) -> torch.Tensor:
        """Loss of one step.

        Args:
            z0, z1: (B, dim) projections of the two views, not normalized.
            indices: (B,) integer dataset indices of the rows, on the CPU or the views' device.
            p0, p1: optional (B, dim) predictor outputs of the two views.
            epoch: The current epoch (e.g. Lightning's ``self.current_epoch``): a training step
                switches the bank to it (:meth:`SeCuCenterBank.set_epoch`).
            update: Overrides the rule that decides whether this call records (see the class).
        """
        return self.terms(z0, z1, indices, p0, p1, epoch=epoch, update=update).loss

    def records(self, update: bool | None = None) -> bool:
        """Whether a call with this ``update`` argument writes the bank (see the class).

        Examples:
            >>> criterion = SeCuLoss(SeCuCenterBank(dim=2, num_clusters=[2], num_instances=4))
            >>> criterion.records(), criterion.eval().records(), criterion.records(update=True)
            (True, False, True)
        """
        if update is not None:
            return bool(update)
        return self.update and self.training and self.bank.training and torch.is_grad_enabled()

    def terms(
        self,
        z0: torch.Tensor,
        z1: torch.Tensor,
        indices: torch.Tensor,
        p0: torch.Tensor | None = None,
        p1: torch.Tensor | None = None,
        *,
        epoch: int | None = None,
        update: bool | None = None,
    ) -> SeCuLossTerms:
        """Like :meth:`forward`, returning the two losses and the labels as well."""
        bank = self.bank
        record = self.records(update)
        views, indices, flags = self._checked_inputs(z0, z1, indices, p0, p1, record)
        if epoch is not None:
            epoch = epoch_number(epoch)
        if record:
            bank.deferred_errors.raise_pending()  # a bad earlier step, found on the device
            if epoch is not None:
                bank.set_epoch(epoch)
        # Assignment and softmaxes in the bank's precision, also under AMP autocast.
        with torch.autocast(device_type=z0.device.type, enabled=False):
            dtype = bank.targets.dtype
            features = [F.normalize(v.to(dtype), dim=1) for v in views]
            return self._terms(features, indices, record, flags)

    def _checked_inputs(
        self,
        z0: torch.Tensor,
        z1: torch.Tensor,
        indices: torch.Tensor,
        p0: torch.Tensor | None,
        p1: torch.Tensor | None,
        record: bool,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """The checks of the class docstring: the views, the indices (int64, on the views'
        device) and, where values are flagged on the device, the flags (z0, z1[, p0, p1],
        indices), else None."""
        num_instances = self.bank.num_instances
        named = check_step_inputs(self.bank.dim, z0, z1, indices, p0, p1)
        views, device = list(named.values()), z0.device
        # Values on the device are flagged there (recording calls only: the flags mask the
        # update); host values are checked at once, which costs no device synchronization.
        checks = bool(self.check_values)
        deferred = checks and record and (self.check_values == "deferred" or device.type != "cpu")
        host_indices = checks and indices.device.type == "cpu"
        host_indices = host_indices and not (deferred and device.type == "cpu")
        if host_indices:  # a DataLoader's indices, checked before the copy to the device
            check_index_range(indices, num_instances)
        if checks and device.type == "cpu" and not deferred:
            check_finite(named)
        indices = indices.to(device, torch.long, non_blocking=True)
        if not deferred:
            return views, indices, None
        flags = flag_bad_values(views, None if host_indices else indices, num_instances)
        if not host_indices:
            indices = indices.clamp(0, num_instances - 1)  # no out-of-bounds reads
        return views, indices, flags

    def _terms(
        self,
        features: list[torch.Tensor],
        indices: torch.Tensor,
        record: bool,
        flags: torch.Tensor | None,
    ) -> SeCuLossTerms:
        bank = self.bank
        num_views, num_heads = len(features), bank.num_heads
        batch = features[0].shape[0]
        stacked = torch.cat(features)  # (num_views * B, dim)
        # Only the assigned centers get gradient: the step normalizes all of them without
        # autograd and, with it, only the (B, H) rows it gathers, head by head (no copy of all
        # the centers).
        raw_centers = list(bank.centers)
        if self.sync_center_gradients:
            raw_centers = dist.mean_gradient_across_ranks(raw_centers)

        # Stored labels: recording needs those of the global batch (every rank updates the
        # counts from all of it); a sharded memory fetches them from their owners.
        if record or bank.memory_sharded:
            sizes = dist.batch_sizes(batch, stacked.device)
            global_indices = dist.gather_rows(indices, sizes)
            stored_global = bank.stored_labels(global_indices)
            offset = sum(sizes[: dist.rank()])
            stored = stored_global[:, offset : offset + batch]
        else:
            stored = bank.stored_labels(indices)

        def assign(cost: torch.Tensor, rows: slice) -> torch.Tensor:
            return bank.assign(cost, indices[rows], stored[:, rows])

        layout = bank.layout(stacked.device)
        cost_offset = bank.cost_offset(stored, stacked.device)

        # Both losses without autograd, every head at once; their exact gradients enter through
        # surrogates (see secu_plugin/core/fused_losses.py for why).
        with torch.no_grad():
            scaled_centers = fused_losses.scaled_unit_rows(
                [center.detach() for center in raw_centers],
                1.0 / self.temperature_c,
                self._workspace,
            )
            step = fused_losses.loss_step(
                stacked.detach(),
                scaled_centers,
                bank.targets,
                stored,
                assign,
                bank.assigner.assigns_rows_independently,
                layout,
                self.temperature_x,
                self.temperature_c,
                self.label_weight,
                self._workspace,
                cost_offset=cost_offset,
            )
        labels = step.labels
        assigned = torch.stack(
            [center.index_select(0, head) for center, head in zip(raw_centers, labels)], 1
        )
        assigned = F.normalize(assigned, dim=2)  # (B, H, dim)
        scale = 1.0 / (num_views * num_heads)
        center_loss = (
            fused_losses.with_gradient(step.center_value, assigned, step.center_gradient) * scale
        )
        representation_loss = (
            fused_losses.with_gradient(step.representation_value, stacked, step.feature_gradient)
            * scale
        )

        if record:
            self._record(labels, global_indices, stored_global, sizes, flags)
        return SeCuLossTerms(
            representation_loss + center_loss, representation_loss, center_loss, labels
        )

    def _record(self, labels, global_indices, stored_global, sizes, flags) -> None:
        """Every rank records the whole global batch, so all ranks keep identical state."""
        bank = self.bank
        # Labels travel as int32 (half the bytes of int64; gloo and NCCL gather no int16),
        # with the bad-step flag as one more column: every rank masks the same steps.
        payload = labels.T.to(torch.int32)
        if flags is not None:
            bad = flags.any()
            payload = torch.cat([payload, bad.to(torch.int32).expand(labels.shape[1], 1)], dim=1)
        gathered = dist.gather_rows(payload, sizes).long()
        if flags is None:
            bank.update(global_indices, gathered.T, previous=stored_global)
            return
        skip = gathered[:, -1].bool().any()
        bank.update(global_indices, gathered[:, :-1].T, previous=stored_global, skip=skip)
        names = ["z0", "z1", "p0", "p1"][: len(flags) - 1] + ["indices", "other ranks"]
        bank.deferred_errors.push(torch.cat([flags, (skip & ~bad)[None]]), names)

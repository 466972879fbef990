"""The SeCu loss: representation loss against frozen centers plus the stable center loss."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from secu_plugin.core import dist
from secu_plugin.core.bank import SeCuCenterBank


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

    Args:
        bank: The center bank holding centers and state.
        temperature_x: Temperature of the representation loss.
        temperature_c: Temperature of the center loss.
        label_weight: Weight of the stored one-hot label in the soft target.
        check_values: Check that indices are in range and features finite (ValueError
            otherwise, the bank untouched). These checks wait for the device once per step;
            on a GPU, ``False`` lets the loss's kernels queue behind the forward pass (shapes
            and dtypes are still checked, and the step then has no device synchronization).

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
        check_values: bool = True,
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
        # Not a submodule: the bank is trained and saved on its own (its memory is per data set).
        self.__dict__["bank"] = bank
        self.temperature_x = float(temperature_x)
        self.temperature_c = float(temperature_c)
        self.label_weight = float(label_weight)
        self.check_values = bool(check_values)
        self._buffers_by_name: dict[str, torch.Tensor] = {}  # scratch space, not state

    def forward(
        self,
        z0: torch.Tensor,
        z1: torch.Tensor,
        indices: torch.Tensor,
        p0: torch.Tensor | None = None,
        p1: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of one step.

        Args:
            z0, z1: (B, dim) projections of the two views, not normalized.
            indices: (B,) int64 dataset indices of the rows.
            p0, p1: optional (B, dim) predictor outputs of the two views.
        """
        return self.terms(z0, z1, indices, p0, p1).loss

    def terms(
        self,
        z0: torch.Tensor,
        z1: torch.Tensor,
        indices: torch.Tensor,
        p0: torch.Tensor | None = None,
        p1: torch.Tensor | None = None,
    ) -> SeCuLossTerms:
        """Like :meth:`forward`, returning the two losses and the labels as well."""
        views = self._check_inputs(z0, z1, indices, p0, p1)
        bank = self.bank
        device_type = z0.device.type
        # Assignment and softmaxes in the bank's precision, also under AMP autocast.
        with torch.autocast(device_type=device_type, enabled=False):
            dtype = bank.targets.dtype
            features = [F.normalize(v.to(dtype), dim=1) for v in views]
            return self._terms(features, indices.long())

    def _terms(self, features: list[torch.Tensor], indices: torch.Tensor) -> SeCuLossTerms:
        bank = self.bank
        num_views, num_heads = len(features), bank.num_heads
        batch = features[0].shape[0]
        stacked = torch.cat(features)  # (num_views * B, dim)
        centers = dist.mean_gradient_across_ranks(bank.normalized_centers())

        # Both losses are computed without autograd, every head at once: one product per loss
        # against all heads' centers, per-head reductions through the bank's layout. Their
        # exact gradients enter through zero-valued surrogates (below), so no (B x sum K)
        # tensor is kept for, or created by, the backward.
        layout = bank.layout(stacked.device)
        with torch.no_grad():
            flat = stacked.detach()
            rows, columns = num_views * batch, layout.total
            similarity = self._workspace("similarity", rows, columns, flat)
            torch.mm(flat, centers.detach().T, out=similarity)
            similarity = similarity.view(num_views, batch, -1)
            cost = -(1.0 / num_views) * similarity.sum(0)
            labels = bank.assign(cost, indices)  # (H, B), decided from the state before the step
            label_columns = layout.to_columns(labels)  # (H, B)
            target_columns = layout.to_columns(bank.stored_or_new_labels(indices, labels))

            # Representation loss. Scaling the (V*B, dim) side is cheaper than the product.
            # The (V, B, sum K) buffers are reused across steps and overwritten in place: on a
            # CPU, fresh allocations of this size cost more in page faults than the arithmetic.
            log_prob = self._workspace("logits", rows, columns, flat)
            torch.mm(flat / self.temperature_x, bank.targets.T, out=log_prob)
            log_prob = layout.log_softmax_(log_prob.view(num_views, batch, -1))
            # View 0's target comes from view 1's projection and vice versa; predictions share
            # their view's target.
            soft_target = self._workspace("soft_target", 2 * batch, columns, flat).view(
                2, batch, -1
            )
            torch.exp(log_prob[:2].flip(0), out=soft_target).mul_(1.0 - self.label_weight)
            soft_target.scatter_add_(
                2,
                target_columns.T.expand(2, batch, num_heads),
                soft_target.new_full((2, batch, num_heads), self.label_weight),
            )
            pairs = log_prob.view(num_views // 2, 2 * batch * columns)
            representation_value = -(pairs @ soft_target.flatten()).sum() / batch
            # d(representation)/d(logits) = (softmax - target) / B, then one product with the
            # frozen targets for d/d(features).
            logit_grad = log_prob.exp_().view(num_views // 2, 2, batch, -1).sub_(soft_target)
            logit_grad = logit_grad.div_(batch).view(rows, -1)
            feature_pull = (logit_grad @ bank.targets) / self.temperature_x

            # Center loss: cross-entropy where only the assigned center's logit varies.
            scaled = similarity.div_(self.temperature_c)
            log_norm = layout.logsumexp(scaled)  # (V, B, H)
            positive = scaled.gather(2, label_columns.T.expand(num_views, batch, num_heads))
            center_value = (log_norm - positive).mean(1).sum()
            center_coef = (torch.exp(positive - log_norm) - 1.0) / (batch * self.temperature_c)
            # d(center loss)/d(assigned centers): each row's pull on its H assigned centers.
            center_pull = torch.einsum("vbh,vbd->bhd", center_coef, flat.view(num_views, batch, -1))

        # Gather the assigned centers only: their gradient is an O(B * H * dim) scatter instead
        # of a dense (B x K) product per head.
        assigned = centers.index_select(0, label_columns.T.flatten()).view(batch, num_heads, -1)
        center_surrogate = (assigned * center_pull).sum()
        feature_surrogate = (stacked * feature_pull).sum()
        scale = 1.0 / (num_views * num_heads)
        center_loss = (center_value + center_surrogate - center_surrogate.detach()) * scale
        representation_loss = (
            representation_value + feature_surrogate - feature_surrogate.detach()
        ) * scale

        # Every rank records the whole global batch, so all ranks keep identical state.
        bank.update(dist.gather_rows(indices), dist.gather_rows(labels.T).T)
        return SeCuLossTerms(
            representation_loss + center_loss, representation_loss, center_loss, labels
        )

    def _workspace(self, name: str, rows: int, columns: int, like: torch.Tensor) -> torch.Tensor:
        """A (rows, columns) buffer kept across steps (contents undefined)."""
        buffer = self._buffers_by_name.get(name)
        if (
            buffer is None
            or buffer.shape != (rows, columns)
            or buffer.dtype != like.dtype
            or buffer.device != like.device
        ):
            buffer = torch.empty(rows, columns, dtype=like.dtype, device=like.device)
            self._buffers_by_name[name] = buffer
        return buffer

    def _check_inputs(self, z0, z1, indices, p0, p1) -> list[torch.Tensor]:
        bank = self.bank
        if (p0 is None) != (p1 is None):
            raise ValueError("p0 and p1 must be given together (predictor outputs of both views)")
        named = {"z0": z0, "z1": z1}
        if p0 is not None:
            named.update(p0=p0, p1=p1)
        for name, value in named.items():
            bank._check_features(value, name)
        batch = z0.shape[0]
        if batch == 0:
            raise ValueError("the batch is empty")
        for name, value in named.items():
            if value.shape[0] != batch:
                raise ValueError(
                    f"{name} has {value.shape[0]} rows but z0 has {batch}: views must match"
                )
        if not isinstance(indices, torch.Tensor):
            raise ValueError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
        if indices.ndim != 1 or indices.shape[0] != batch:
            raise ValueError(
                f"indices must have shape ({batch},) to match the views, got {tuple(indices.shape)}"
            )
        if indices.device != z0.device:
            raise ValueError(f"indices are on {indices.device} but the views on {z0.device}")
        if not self.check_values:
            return [z0, z1] if p0 is None else [z0, z1, p0, p1]
        # One device synchronization for every value check.
        finite = [torch.isfinite(value.detach()).all() for value in named.values()]
        checks = torch.stack(
            [indices.min().long(), indices.max().long(), *[f.long() for f in finite]]
        )
        checks = checks.tolist()
        low, high = checks[0], checks[1]
        for (name, _), is_finite in zip(named.items(), checks[2:]):
            if not is_finite:
                raise ValueError(f"{name} contains NaN or infinite values")
        if low < 0 or high >= bank.num_instances:
            raise ValueError(
                f"indices must be in [0, {bank.num_instances}) (num_instances), got range "
                f"[{low}, {high}]"
            )
        return [z0, z1] if p0 is None else [z0, z1, p0, p1]

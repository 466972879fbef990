"""The SeCu loss: representation loss against frozen centers plus the stable center loss."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from secu_plugin import dist
from secu_plugin.bank import SeCuCenterBank


class SeCuLossTerms(NamedTuple):
    """The parts of one SeCu step."""

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

        # Both losses are computed without autograd, with every head at once in one product per
        # loss against all heads' centers; their exact gradients enter through zero-valued
        # surrogates (below): no (B x sum K) tensor is kept for, or created by, the backward.
        with torch.no_grad():
            flat = stacked.detach()
            similarity = (flat @ centers.detach().T).view(num_views, batch, -1)
            cost = -(1.0 / num_views) * similarity.sum(0)
            labels = bank.assign(cost, indices)  # (H, B), decided from the state before the step
            target_labels = bank.stored_or_new_labels(indices, labels)
            # Scaling the (V*B, dim) side is cheaper than the (V*B, sum K) product.
            logits = ((flat / self.temperature_x) @ bank.targets.T).view(num_views, batch, -1)

            representation_value = logits.new_zeros(())
            center_value = logits.new_zeros(())
            center_coef = logits.new_empty(num_views, batch, num_heads)
            rows = torch.arange(batch, device=logits.device)
            # split gives views of each head's columns; each head's logits are overwritten in
            # place by d(loss)/d(logits) once used.
            heads = zip(logits.split(bank.num_clusters, dim=2),
                        similarity.split(bank.num_clusters, dim=2))
            for head, (head_logits, head_similarity) in enumerate(heads):
                log_prob = F.log_softmax(head_logits, dim=2)  # (V, B, K)
                prob = log_prob.exp()
                # View 0's target comes from view 1's projection and vice versa; predictions
                # share their view's target.
                soft_target = (1.0 - self.label_weight) * prob[:2].flip(0)
                soft_target[:, rows, target_labels[head]] += self.label_weight
                if num_views == 4:
                    soft_target = torch.cat([soft_target, soft_target])
                representation_value -= (log_prob * soft_target).sum(2).mean(1).sum()
                head_logits.copy_(prob).sub_(soft_target).div_(batch)

                # Center loss: cross-entropy where only the assigned center's logit varies.
                scaled = head_similarity / self.temperature_c
                log_norm = torch.logsumexp(scaled, dim=2)
                positive = scaled[:, rows, labels[head]]
                center_value += (log_norm - positive).mean(1).sum()
                center_coef[:, :, head] = (torch.exp(positive - log_norm) - 1.0) / (
                    batch * self.temperature_c
                )
            # d(representation)/d(features): one product with the frozen targets.
            feature_pull = (logits.view(num_views * batch, -1) @ bank.targets) / self.temperature_x
            # d(center loss)/d(assigned centers): each row's pull on its B x H assigned centers.
            center_pull = torch.einsum("vbh,vbd->bhd", center_coef, flat.view(num_views, batch, -1))

        # Gather the assigned centers only: their gradient is an O(B * H * dim) scatter instead
        # of a dense (B x K) product per head.
        offsets = centers.new_tensor(bank.offsets[:-1], dtype=torch.long)
        assigned = centers[labels.T + offsets]
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
            if not torch.isfinite(value.detach()).all():
                raise ValueError(f"{name} contains NaN or infinite values")
        if not isinstance(indices, torch.Tensor):
            raise ValueError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
        if indices.ndim != 1 or indices.shape[0] != batch:
            raise ValueError(
                f"indices must have shape ({batch},) to match the views, got {tuple(indices.shape)}"
            )
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= bank.num_instances:
            raise ValueError(
                f"indices must be in [0, {bank.num_instances}) (num_instances), got range "
                f"[{low}, {high}]"
            )
        if indices.device != z0.device:
            raise ValueError(f"indices are on {indices.device} but the views on {z0.device}")
        return [z0, z1] if p0 is None else [z0, z1, p0, p1]

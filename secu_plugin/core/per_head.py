"""The straightforward per-head SeCu loss: the baseline of the loss-step benchmark.

This is SeCu written the obvious way, one head at a time, the way the reference code
(github.com/idstcv/SeCu, ``secu/builder.py``) is organised:

- normalize the head's centers and score the detached features against them with one dense
  ``(B, K)`` product per view, keeping autograd through every logit;
- assign each row under the size constraint, ``argmin_k(-mean similarity - dual_k)``;
- center loss: clone the logits without gradient and put back only the assigned entry, so that
  only the assigned center of each row receives gradient, then a plain cross-entropy;
- representation loss: its own ``(B, K)`` product per view against the frozen targets, and a
  cross-entropy with the soft target ``(1 - w) * softmax(other view) + w * one_hot(label)``;
- update the memory, counts and duals of the head.

It computes the same loss, gradients and state as :class:`secu_plugin.SeCuLoss` (checked to
1e-6 in float64 by ``tests/test_benchmarks.py``), but its backward pass goes through ``2 * V``
dense ``(B, K_i)`` products per head. It keeps its state in a :class:`SeCuCenterBank`, so both
forms run from identical state (``copy.deepcopy`` of one bank). Single process only, and the
indices of a batch are assumed distinct (as in the benchmark).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from secu_plugin.core.assign import SizeConstrainedAssigner
from secu_plugin.core.bank import SeCuCenterBank
from secu_plugin.core.layout import HeadLayout


class PerHeadSeCuLoss(nn.Module):
    """SeCu loss computed head by head with dense autograd (benchmark baseline).

    Args:
        bank: The center bank holding centers and state (read and updated in place).
        temperature_x: Temperature of the representation loss.
        temperature_c: Temperature of the center loss.
        label_weight: Weight of the stored one-hot label in the soft target.

    Examples:
        >>> bank = SeCuCenterBank(dim=16, num_clusters=[4, 8], num_instances=32)
        >>> bank.start_epoch()
        >>> criterion = PerHeadSeCuLoss(bank)
        >>> z0 = torch.randn(8, 16, requires_grad=True)
        >>> z1 = torch.randn(8, 16, requires_grad=True)
        >>> criterion(z0, z1, torch.arange(8)).backward()
        >>> bool((bank.memory[:, :8] >= 0).all())
        True
    """

    def __init__(
        self,
        bank: SeCuCenterBank,
        temperature_x: float = 0.05,
        temperature_c: float = 0.05,
        label_weight: float = 0.2,
    ) -> None:
        super().__init__()
        object.__setattr__(self, "bank", bank)  # not a submodule: see SeCuLoss.__init__
        self.temperature_x = temperature_x
        self.temperature_c = temperature_c
        self.label_weight = label_weight

    def forward(
        self,
        z0: torch.Tensor,
        z1: torch.Tensor,
        indices: torch.Tensor,
        p0: torch.Tensor | None = None,
        p1: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of one step, averaged over heads and views.

        Args:
            z0, z1: (B, dim) projections of the two views, not normalized.
            indices: (B,) distinct dataset indices of the rows.
            p0, p1: optional (B, dim) predictor outputs of the two views (ImageNet form).
        """
        bank = self.bank
        views = [z0, z1] if p0 is None else [z0, z1, p0, p1]
        with torch.autocast(device_type=z0.device.type, enabled=False):
            dtype = bank.targets.dtype
            views = [F.normalize(v.to(dtype), dim=1) for v in views]
            # The soft target of each view comes from the other view's projection.
            other = [1, 0] if p0 is None else [1, 0, 1, 0]
            indices = indices.long()
            batch = z0.shape[0]
            rows = torch.arange(batch, device=z0.device)

            representation_loss = z0.new_zeros((), dtype=dtype)
            center_loss = z0.new_zeros((), dtype=dtype)
            for head in range(bank.num_heads):
                centers = F.normalize(bank.centers[head], dim=1)  # (K, dim), with gradient
                targets = bank.frozen_targets(head)  # (K, dim), frozen at the epoch start
                counts, duals = bank.counts[head], bank.duals[head]

                # Similarity of every (detached) view to the current centers: dense autograd.
                similarity = [v.detach() @ centers.T for v in views]  # V x (B, K)

                # Constrained assignment from the state before the step.
                with torch.no_grad():
                    cost = -torch.stack(similarity).mean(0)
                    stored = bank.memory[head, indices].long()
                    if isinstance(bank.assigner, SizeConstrainedAssigner):
                        labels = torch.argmin(cost - duals, dim=1)
                    else:
                        one_head = HeadLayout([counts.numel()], device=cost.device)
                        labels = bank.assigner.assign(cost, counts, duals, stored[None], one_head)[
                            0
                        ]
                    target_labels = torch.where(stored >= 0, stored, labels)

                # Center loss: only the assigned entry of each row carries gradient.
                for sim in similarity:
                    logits = sim.detach().clone()
                    logits[rows, labels] = sim[rows, labels]
                    center_loss = center_loss + F.cross_entropy(logits / self.temperature_c, labels)

                # Representation loss against the frozen targets, soft labels.
                log_probs = [
                    F.log_softmax(v @ targets.T / self.temperature_x, dim=1) for v in views
                ]
                one_hot = F.one_hot(target_labels, targets.shape[0]).to(dtype)
                for log_prob, source in zip(log_probs, other):
                    prob = log_probs[source].detach().exp()
                    soft = (1.0 - self.label_weight) * prob + self.label_weight * one_hot
                    representation_loss = representation_loss - (soft * log_prob).sum(1).mean()

                # State of the head: memory, counts and duals.
                with torch.no_grad():
                    if isinstance(bank.assigner, SizeConstrainedAssigner):
                        assigner = bank.assigner
                        num_clusters = counts.numel()
                        # index_add_, not bincount: no host synchronization on a GPU.
                        histogram = torch.zeros(
                            num_clusters, dtype=torch.long, device=labels.device
                        ).index_add_(0, labels, torch.ones_like(labels))
                        duals -= (assigner.dual_lr / batch) * histogram.to(duals.dtype)
                        duals += assigner.dual_lr * (assigner.lower_bound_ratio / num_clusters)
                        if assigner.lower_bound_ratio < 1:
                            duals.clamp_(min=0)
                        counts += histogram
                    else:
                        bank.assigner.update(
                            counts, duals, labels[None], labels[None], stored[None], one_head
                        )
                    bank.memory[head, indices] = labels.to(bank.memory.dtype)

            scale = 1.0 / (len(views) * bank.num_heads)
            return (representation_loss + center_loss) * scale

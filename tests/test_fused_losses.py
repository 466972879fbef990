"""The fused loss step: its row blocks and column chunks change nothing but the speed."""

import pytest
import torch
import torch.nn.functional as F

from secu_plugin import EntropyConstrainedAssigner, SizeConstrainedAssigner
from secu_plugin.core.fused_losses import Workspace, loss_step, scaled_unit_rows
from secu_plugin.core.layout import HeadLayout

HEADS, BATCH, DIM = [4, 7, 3], 13, 8


def step_terms(
    assigner, independent, temperature, num_views, block_rows, chunk_columns, by_offset=False
):
    generator = torch.Generator().manual_seed(0)
    layout = HeadLayout(HEADS)
    flat = torch.randn(num_views * BATCH, DIM, generator=generator, dtype=torch.float64)
    centers = torch.randn(layout.total, DIM, generator=generator, dtype=torch.float64)
    targets = torch.randn(layout.total, DIM, generator=generator, dtype=torch.float64)
    stored = torch.randint(-1, min(HEADS), (len(HEADS), BATCH), generator=generator)
    counts = torch.randint(0, 20, (layout.total,), generator=generator)
    duals = torch.rand(layout.total, generator=generator, dtype=torch.float64)

    def assign(cost, rows):
        return assigner.assign(cost, counts, duals, stored[:, rows], layout)

    workspace = Workspace()
    scaled_centers = scaled_unit_rows([centers], 1.0 / temperature, workspace)
    return loss_step(
        F.normalize(flat, dim=1),
        scaled_centers,
        F.normalize(targets, dim=1),
        stored,
        assign,
        independent,
        layout,
        temperature,
        temperature,
        0.3,
        workspace,
        block_rows=block_rows,
        chunk_columns=chunk_columns,
        cost_offset=assigner.cost_offset(counts, duals, stored, layout) if by_offset else None,
    )


@pytest.mark.parametrize("assigner", [SizeConstrainedAssigner(), EntropyConstrainedAssigner(5.0)])
@pytest.mark.parametrize("independent", [True, False], ids=["by_rows", "whole_cost"])
# 0.001: exp of 1 / temperature would overflow, so the step subtracts per-head maxima.
@pytest.mark.parametrize("temperature", [0.05, 0.001], ids=["unshifted", "shifted"])
@pytest.mark.parametrize("num_views", [2, 4])
def test_blocks_and_chunks_give_the_same_step(assigner, independent, temperature, num_views):
    whole = step_terms(assigner, independent, temperature, num_views, BATCH, max(HEADS))
    assert whole.labels.shape == (len(HEADS), BATCH)
    # Chunks of 2 and 3 columns split every head unevenly; 1: one column at a time.
    for block_rows, chunk_columns, by_offset in [
        (5, 2, False),
        (BATCH, 3, False),
        (BATCH, 1, False),
        (BATCH, max(HEADS), True),  # the labels from the assigner's offset, head by head
        (5, 2, True),  # ... and chunk by chunk
        (BATCH, 1, True),
    ]:
        parts = step_terms(
            assigner, independent, temperature, num_views, block_rows, chunk_columns, by_offset
        )
        for name, value, expected in zip(whole._fields, parts, whole):
            # Chunks sum the exponentials in another order: float64 rounding, times up to
            # 1 / temperature (1,000) in the logits, relative to the term's size.
            scale = float(expected.abs().max()) if expected.is_floating_point() else 0.0
            torch.testing.assert_close(value, expected, rtol=0, atol=1e-12 * scale, msg=name)

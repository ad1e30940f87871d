"""One ``num_heads`` attribute sizing several head groups that the graph does not couple.

Pattern of HF ``MraSelfAttention`` on CPU: q, k and v are each viewed as
``(B, -1, self.num_heads, self.head_dim)`` and padded with zeros to a kernel width of 32
(``32 - self.head_dim`` wide); the block-sparse kernel is absent, so the fallback reads q's
shape only. Nothing in the graph couples the q, k and v heads (three label groups), another
attribute holds the head count's value (``num_blocks == num_heads``), so which attribute
sizes the views is ambiguous and their head counts are rewritten by run-time patches, and
the pad width coincides with ``head_dim`` (16 = 32 - 16), so setting ``head_dim`` by
matching values is a wrong guess that verification undoes.

The bug this pins: the run-time patch of the module had been narrowed to the sizes that
were literals *under the guess*; once the guess was put back the ``head_dim`` in the views
was stale and the slim model did not run (``shape '[2, -1, 3, 16]' is invalid``).

Oracle: slim == the original with the removed labels masked to zero (``verify_pruning``),
for uniform and for unequal head counts per group.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from pruning_ir import Label, PruningIR, UniformLabelSelector, verify_pruning


class PaddedHeadsAttention(nn.Module):
    """Model dim 24; q/k/v Linear 24 -> 64 = 4 heads x 16; output Linear 64 -> 24, then a
    head Linear 24 -> 5. Couplings: q heads and head_dim with ``out`` in (through the
    kernel's fallback); k heads and v heads each their own group (they reach no output); the
    three head_dims tied by the one ``head_dim`` attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads = 4
        self.num_blocks = 4  # same value as num_heads: the attribute sizing the views is ambiguous
        self.head_dim = 16
        self.all_head_size = 64
        self.query = nn.Linear(24, 64)
        self.key = nn.Linear(24, 64)
        self.value = nn.Linear(24, 64)
        self.out = nn.Linear(64, 24)
        self.head = nn.Linear(24, 5)

    def kernel(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """Stand-in for a block-sparse kernel that is not available: returns q's shape only."""
        return torch.zeros_like(q)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q = self.query(x).view(b, -1, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.key(x).view(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.value(x).view(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
        mask = (x[..., 0] > 0).int().unsqueeze(1).repeat(1, self.num_heads, 1).reshape(b * self.num_heads, t)
        pad = (b, self.num_heads, t, 32 - self.head_dim)  # a kernel's width, as MRA pads to a warp
        q = torch.cat([q, torch.zeros(pad)], dim=-1)  # (B, H, T, 32)
        k = torch.cat([k, torch.zeros(pad)], dim=-1)
        v = torch.cat([v, torch.zeros(pad)], dim=-1)
        ctx = self.kernel(q, k, v, mask)[:, :, :, : self.head_dim]  # (B, H, T, D)
        ctx = ctx.reshape(b, self.num_heads, t, self.head_dim).permute(0, 2, 1, 3).contiguous()
        y = x + self.out(ctx.view(b, t, self.all_head_size))  # (B, T, 24)
        return self.head(torch.relu(y))


def _ir() -> PruningIR:
    torch.manual_seed(0)
    model = PaddedHeadsAttention().eval()
    return PruningIR(model, example_inputs=(torch.randn(2, 7, 24),))


def _head_groups(ir: PruningIR) -> list[int]:
    return [g.gid for g in ir.prunable_label_groups() if g.structured and g.size == 4]


def test_uniform_prunes_heads_sized_by_an_ambiguous_attribute() -> None:
    ir = _ir()
    assert len(_head_groups(ir)) == 3  # q, k and v heads: the graph does not couple them
    labels = UniformLabelSelector(0.3).select(ir)
    assert {lab.group for lab in labels} >= set(_head_groups(ir))
    rep = verify_pruning(ir, labels)
    assert rep.exact, rep
    slim = ir.prune(labels=labels).model
    assert slim.query.out_features == slim.key.out_features == slim.value.out_features == 36  # 3 heads x 12


@pytest.mark.parametrize("counts", [(1, 2, 3), (3, 1, 0), (2, 0, 2)])
def test_unequal_head_counts_per_group(counts: tuple[int, int, int]) -> None:
    """The views are patched one by one, so q, k and v may keep different head counts."""
    ir = _ir()
    dims = [g for g in ir.prunable_label_groups() if g.size == 16]
    labels = [lab for lab in ir.labels(dims[0])[:4]]  # head_dim 16 -> 12: the wrong guess
    for gid, n in zip(_head_groups(ir), counts, strict=True):
        labels += [Label(lab.owner, gid, lab.index) for lab in ir.labels(gid)[:n]]
    rep = verify_pruning(ir, labels)
    assert rep.exact, rep

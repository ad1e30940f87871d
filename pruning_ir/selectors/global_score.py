"""Global selection: the lowest-scored labels of the whole model, whatever their group."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from ..errors import InvalidInputError
from .base import LabelSelector, align_selection
from .budget import CostArg, label_costs, ranked_units

if TYPE_CHECKING:
    from .._ir.labels import Label, LabelGroup
    from ..ir import PruningIR

log = logging.getLogger(__name__)


class GlobalScoreLabelSelector(LabelSelector):
    """Remove the ``n`` lowest-scored labels over all prunable groups together.

    Scores come from the IR (a criterion such as :class:`~pruning_ir.LossAwareCriterion`,
    whose scores are in units of loss and so comparable across groups); without a
    criterion the default magnitude scores are used, which are *not* comparable across
    layers, so calibrate first for a fair global ranking.

    **Floor per group.** Every group keeps its ``max(min_kept, ceil(min_kept_ratio * size))``
    highest-scored labels; those are never candidates, so no group is emptied. When the
    request exceeds the candidates, all candidates are removed and a warning is logged.
    Structured labels (attention heads, GQA groups, conv groups) are labels of their own
    groups, so they are removed as whole units like any other label. Within a group,
    labels always go in ascending score order.

    Args:
        n_or_ratio: a float in ``[0, 1)``: the fraction of all prunable labels to remove
            (rounded down); an int ``>= 1``: the number of labels to remove (a float ``>= 1``
            is refused: ``1.0`` is neither "all" nor "one label").
        min_kept: labels each group keeps at least (``>= 1``).
        min_kept_ratio: fraction of each group's labels it keeps at least, in ``[0, 1)``.
        tie_attention_head_dims: at every ``scaled_dot_product_attention`` whose q/k head size
            and v head size are two groups of equal size, remove the same number of labels from
            both (their ``k``-th lowest-scored labels go together, ranked by their mean score),
            so SDPA keeps its fused kernel (see
            :func:`~pruning_ir.selectors.budget.attention_head_ties`). A tied unit that would
            overshoot ``n`` is left out (with the later units of its pair) and single labels fill
            the rest.
        cost: rank labels by score *per unit of cost saved* instead of by score: ``"macs"``,
            ``"params"``, or a factory ``(ir, snapshot_name) -> CostModel``. Each label's saving
            is its group's at full width. With a budget in MACs (or parameters) this is the
            ranking to use: by score alone a cheap layer (a last stage at small spatial size, a
            narrow FFN) loses most of its labels before the expensive ones are touched, and a
            selection that reaches the budget then removes far more labels than needed. It is the
            greedy form of :class:`~pruning_ir.KnapsackLabelSelector` (no re-linearisation,
            no search), in one pass.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from pruning_ir import PruningIR, GlobalScoreLabelSelector
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
        >>> ir = PruningIR(model, example_inputs=(torch.randn(1, 4),))
        >>> len(GlobalScoreLabelSelector(0.5).select(ir)), len(GlobalScoreLabelSelector(3).select(ir))
        (7, 3)
    """

    def __init__(self, n_or_ratio: float, *, min_kept: int = 1, min_kept_ratio: float = 0.0,
                 tie_attention_head_dims: bool = True, cost: CostArg = None) -> None:
        ok_number = isinstance(n_or_ratio, (int, float)) and not isinstance(n_or_ratio, bool)
        if not ok_number or not math.isfinite(n_or_ratio) or n_or_ratio < 0 or (
                n_or_ratio >= 1 and not isinstance(n_or_ratio, int)):
            raise InvalidInputError(
                f"GlobalScoreLabelSelector(n_or_ratio={n_or_ratio!r}): give a fraction in [0, 1) of all "
                "prunable labels as a float (e.g. 0.3) or a number of labels to remove as an int >= 1 "
                "(e.g. 128; a float such as 1.0 is refused so that a ratio is never read as a count)."
            )
        if not isinstance(min_kept, int) or isinstance(min_kept, bool) or min_kept < 1:
            raise InvalidInputError(f"GlobalScoreLabelSelector(min_kept={min_kept!r}): every group keeps at least "
                                    "one label; give an int >= 1.")
        if not isinstance(min_kept_ratio, (int, float)) or not 0.0 <= min_kept_ratio < 1.0:
            raise InvalidInputError(f"GlobalScoreLabelSelector(min_kept_ratio={min_kept_ratio!r}): give a fraction "
                                    "in [0, 1) of each group to keep.")
        self.n_or_ratio = n_or_ratio
        self.min_kept = min_kept
        self.min_kept_ratio = float(min_kept_ratio)
        self.tie_attention_head_dims = bool(tie_attention_head_dims)
        if cost is not None and not (cost in ("macs", "params") or callable(cost)):
            raise InvalidInputError(f"GlobalScoreLabelSelector(cost={cost!r}): give 'macs', 'params' or a factory "
                                    "(ir, snapshot_name) -> CostModel such as MacsModel.")
        self.cost = cost

    def select(self, ir: PruningIR, snapshot_name: str = "main") -> list[Label]:
        scores = ir.label_scores(snapshot_name)
        total = sum(int(s.numel()) for s in scores.values())
        n = math.floor(self.n_or_ratio * total + 1e-9) if self.n_or_ratio < 1 else int(self.n_or_ratio)
        if n == 0 or not scores:
            return []
        costs = label_costs(ir, snapshot_name, self.cost, "GlobalScoreLabelSelector")
        ranking = ranked_units(ir, snapshot_name, self._floor, self.tie_attention_head_dims, costs)
        available = int(ranking.ends[-1]) if len(ranking) else 0
        if n > available:
            log.warning("GlobalScoreLabelSelector: %d labels requested but only %d can go without breaking the "
                        "per-group floor; removing %d", n, available, available)
            n = available
        return align_selection(ir, ranking.first_labels(n), snapshot_name)

    def _floor(self, g: LabelGroup) -> int:
        return min(max(self.min_kept, math.ceil(self.min_kept_ratio * g.size - 1e-9)), g.size)

    def __repr__(self) -> str:
        return (f"GlobalScoreLabelSelector(n_or_ratio={self.n_or_ratio}, min_kept={self.min_kept}, "
                f"min_kept_ratio={self.min_kept_ratio}, tie_attention_head_dims={self.tie_attention_head_dims}"
                + (f", cost={self.cost!r})" if self.cost is not None else ")"))

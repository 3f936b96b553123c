"""The model as one vector: the update between two sides over every tensor, a tensor missing on one
side counting as zeros there."""

from __future__ import annotations

from collections.abc import Sequence

from .norms import PairStats, TensorStats, merge_all, merge_pairs


def _finite_only(stats: TensorStats) -> TensorStats:
    """The finite values of a side: B−A counts only elements finite on both sides, and a
    missing side's zeros are finite."""
    return TensorStats(
        numel=stats.finite,
        l1=stats.l1,
        sumsq=stats.sumsq,
        linf=stats.linf,
        total=stats.total,
        zeros=stats.zeros,
        scale=stats.scale,
    )


def _negated(stats: TensorStats) -> TensorStats:
    total = None if stats.total is None else -stats.total
    return TensorStats(
        stats.numel, stats.l1, stats.sumsq, stats.linf, total, stats.zeros, 0, 0, stats.scale
    )


def one_sided(a: TensorStats | None, b: TensorStats | None) -> PairStats:
    """A tensor on one side only, or in two shapes (then both sides): its values are
    coordinates of its own in the model vector, zeros on the other side, so B−A is B there
    (or −A), and they add nothing to ⟨A,B⟩."""
    a, b = a or TensorStats(), b or TensorStats()
    diff = merge_all([_finite_only(b), _negated(_finite_only(a))])
    return PairStats(a, b, diff, 0.0, identical=not (a.numel or b.numel))


def model_update(parts: Sequence[PairStats | None]) -> PairStats | None:
    """The update of a set of tensors from each one's part; None when any part is unknown
    (a side known only from a saved report holds norms, not values), never a subset's."""
    known = [p for p in parts if p is not None]
    if len(known) < len(parts):
        return None
    return merge_pairs(known) if known else one_sided(None, None)

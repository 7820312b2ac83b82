"""Which source to transfer from: rank candidate time-series data sets by how close
their classes look to the target's.

Whether transfer helps depends on how similar source and target are; Fawaz et al.
(2018, "Transfer learning for time series classification") picked each target's
source by dynamic time warping (DTW) between class prototypes, and the nearest source
helped on most UCR targets. Here:

- every series is resampled to `length` steps, z-normalised per channel and averaged
  over channels (so sets with other channel counts compare), then each class is
  represented by its mean series (Fawaz et al. average with DBA instead);
- the distance from the target to a source is the mean, over the target's classes, of
  the DTW distance to the nearest source prototype: every target class should find
  something like it in the source (Fawaz et al. take the single closest pair);
- DTW is the classic one (squared differences, steps (1,0), (0,1), (1,1), no window),
  computed for all prototype pairs at once along anti-diagonals.

    ranking = rank_sources((x_target, y_target), {"GunPoint": (x, y), ...})
    ranking[0].name   # the nearest source
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

Labelled = tuple  # (x [N, T, C] float, y [N] int class ids)


@dataclass(frozen=True)
class RankedSource:
    name: str
    distance: float   # mean DTW distance from each target class to its nearest source class


def class_prototypes(x: Tensor,   # [N, T, C] series (T >= 2; no NaN padding)
                     y: Tensor,   # [N] class ids
                     length: int = 64) -> Tensor:
    """[K, length]: each class's mean series, after resampling every series to `length`
    steps, z-normalising each channel and averaging the channels."""
    if x.dim() != 3 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"expected series x [N, T, C] and labels y [N] with N > 0, got x "
                         f"{tuple(x.shape)} and y {tuple(y.shape)}")
    series = F.interpolate(x.double().transpose(1, 2), size=length, mode="linear",
                           align_corners=True)                       # [N, C, length]
    series = (series - series.mean(2, keepdim=True)) / series.std(2, keepdim=True).clamp_min(1e-8)
    series = series.mean(1)                                          # [N, length]
    return torch.stack([series[y == label].mean(0) for label in torch.unique(y)])


def dtw(a: Tensor, b: Tensor) -> Tensor:
    """DTW distance (sum of squared differences along the best warping path) between
    the series a[p] and b[p]: a, b [P, L] -> [P]."""
    pairs, length = a.shape
    cost = (a[:, :, None] - b[:, None, :]).square()                  # [P, L, L]
    total = torch.full((pairs, length + 1, length + 1), float("inf"), dtype=a.dtype, device=a.device)
    total[:, 0, 0] = 0
    # Cells on one anti-diagonal (i + j = d) depend only on the two before it.
    for d in range(2, 2 * length + 1):
        i = torch.arange(max(1, d - length), min(length, d - 1) + 1, device=a.device)
        j = d - i
        best = torch.minimum(torch.minimum(total[:, i - 1, j - 1], total[:, i - 1, j]), total[:, i, j - 1])
        total[:, i, j] = cost[:, i - 1, j - 1] + best
    return total[:, length, length]


def dataset_distance(target: Tensor,   # [K_t, L] target prototypes
                     source: Tensor,   # [K_s, L] source prototypes
                     ) -> float:
    """Mean over target classes of the DTW distance to the nearest source class."""
    k_t, k_s = target.shape[0], source.shape[0]
    pairwise = dtw(target.repeat_interleave(k_s, 0), source.repeat(k_t, 1)).view(k_t, k_s)
    return pairwise.min(1).values.mean().item()


def rank_sources(target: Labelled, candidates: Mapping[str, Labelled],
                 length: int = 64) -> list[RankedSource]:
    """Candidate source sets, nearest to the target first (see the module docstring).
    target and each candidate: (x [N, T, C], y [N]); channel counts may differ."""
    if not candidates:
        raise ValueError("rank_sources needs at least one candidate source")
    reference = class_prototypes(*target, length=length)
    ranked = [RankedSource(name, dataset_distance(reference, class_prototypes(*data, length=length)))
              for name, data in candidates.items()]
    return sorted(ranked, key=lambda r: (r.distance, r.name))

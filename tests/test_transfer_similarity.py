"""rank_sources: DTW between class prototypes picks the source whose classes look like
the target's."""
import math

import pytest
import torch

from rnnfast import transfer


def _naive_dtw(a, b):
    n = len(a)
    total = [[math.inf] * (n + 1) for _ in range(n + 1)]
    total[0][0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, n + 1):
            total[i][j] = (a[i - 1] - b[j - 1]) ** 2 + min(total[i - 1][j - 1], total[i - 1][j], total[i][j - 1])
    return total[n][n]


def test_dtw_matches_the_textbook_recursion():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 9, generator=generator, dtype=torch.float64), torch.randn(5, 9, generator=generator,
                                                                                     dtype=torch.float64)
    ours = transfer.dtw(a, b)
    for p in range(5):
        assert ours[p].item() == pytest.approx(_naive_dtw(a[p].tolist(), b[p].tolist()), rel=1e-12)
    assert transfer.dtw(a, a).eq(0).all()


def test_dtw_forgives_a_shift_that_euclid_does_not():
    t = torch.linspace(0, 2 * math.pi, 40, dtype=torch.float64)
    bump = torch.exp(-((t - 2.0) ** 2) * 4)
    shifted = torch.exp(-((t - 3.0) ** 2) * 4)
    assert transfer.dtw(bump[None], shifted[None]).item() < 0.2 * (bump - shifted).square().sum().item()


def _family(kind, n, length, classes, generator, channels=1):
    """n noisy series per class of a shape family: class c differs by frequency or slope."""
    t = torch.linspace(0, 1, length)
    xs, ys = [], []
    for c in range(classes):
        for _ in range(n):
            phase = torch.rand(1, generator=generator) * 0.3
            if kind == "waves":
                base = torch.sin(2 * math.pi * (c + 1) * (t + phase))
            elif kind == "squares":
                base = torch.sign(torch.sin(2 * math.pi * (c + 1) * (t + phase)))
            elif kind == "ramps":
                base = (c + 1) * t + phase
            else:  # random walks
                base = torch.randn(length, generator=generator).cumsum(0)
            noise = 0.2 * torch.randn(length, channels, generator=generator)
            xs.append(base[:, None] + noise)
            ys.append(c)
    return torch.stack(xs), torch.tensor(ys)


def test_the_source_with_the_same_shapes_ranks_first():
    generator = torch.Generator().manual_seed(1)
    target = _family("waves", 6, 50, 3, generator)
    candidates = {
        "walks": _family("walks", 8, 80, 3, generator),
        "ramps": _family("ramps", 8, 60, 2, generator),
        "waves, other length and 3 channels": _family("waves", 8, 120, 3, generator, channels=3),
        "squares": _family("squares", 8, 50, 3, generator),
    }
    ranking = transfer.rank_sources(target, candidates, length=48)
    assert [r.name for r in ranking][:2] == ["waves, other length and 3 channels", "squares"]
    assert all(a.distance <= b.distance for a, b in zip(ranking, ranking[1:]))


def test_prototypes_and_errors():
    x = torch.randn(6, 30, 2)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    assert transfer.class_prototypes(x, y, length=16).shape == (3, 16)
    with pytest.raises(ValueError, match="expected series x"):
        transfer.class_prototypes(torch.randn(6, 30), y)
    with pytest.raises(ValueError, match="at least one candidate"):
        transfer.rank_sources((x, y), {})

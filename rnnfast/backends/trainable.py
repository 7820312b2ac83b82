"""Which part of a partly frozen parameter's gradient is worth computing.

A freeze mask (True = frozen) on a weight [R, C] usually freezes whole rows: gates, or
units (the 4 rows of a hidden unit). The weight gradient dgates^T @ inputs is then only
computed over the row blocks that hold a trainable entry; the frozen entries left
inside those blocks are zeroed on the computed rows only, and every other row is
written as zeros, never multiplied.

Rows, not columns, and whole blocks of ROW_BLOCK rows (aligned, a short tail merged
into the block before it), because that keeps every trainable entry bit-identical to
computing everything (DESIGN.md §4: "the rest exact"). MKL accumulates each output
element in the same order whatever the number of rows of the product, unless it is a
single row (a matrix-vector product, rounded differently); a product over a subset of
the *columns* does round differently where the subset ends in a partial vector tile
(measured on MKL 2024.2: fp32/fp64/bf16/fp16, 1 and 2 threads). So frozen columns (the
old inputs of a widened layer) are multiplied and zeroed, not skipped. The cpu
backend's own GEMM (passed in as `mm`) sums each element in one order whatever rows or
columns it covers, so the same holds there by construction.

Deriving the blocks reads the mask on the host, so it is done once per mask tensor
(cached by identity and version: a new mask from freeze()/unfreeze(), an in-place edit
or a copy to another device gets a fresh plan) and never inside a training step
after the first, which keeps steps free of host syncs (tests/test_cuda_graphs.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from .gemm import MatMul

ROW_BLOCK = 16
# Up to this many contiguous runs of blocks are read through strided views (several
# products, no copy of dgates); more runs are gathered into one product.
_MAX_RUNS = 4
# Skipping pays only when the multiply-adds it saves outweigh the extra calls: each
# product (and the zero fill) costs ~15-20 us on CPU, about what 2^20 multiply-adds take
# on the 2-core EPYC (at N=80, 4H=256, I=64 four runs of views took twice the whole
# product). On CUDA a call costs ~5 us, ~2^24 multiply-adds of a mid-size GEMM on an
# H100 (a model, not measured).
_MIN_SAVED_PER_CALL = {"cpu": 1 << 20, "cuda": 1 << 24}

Selection = Union[slice, Tensor]   # a contiguous range, or int64 indices on the mask's device


@dataclass(frozen=True)
class TrainableBlocks:
    """The computed rows of a [R, C] gradient."""
    runs: tuple[tuple[int, int], ...]       # [start, stop) ranges of computed rows
    shape: tuple[int, int]
    rows: Selection                         # the same rows, for a view or a gather
    frozen_part: Optional[Tensor]           # [computed rows, C] bool: frozen entries among them

    @property
    def everything(self) -> bool:
        return self.runs == ((0, self.shape[0]),)

    @property
    def computed_rows(self) -> int:
        return sum(b - a for a, b in self.runs)


_CACHE: WeakIdKeyDictionary = WeakIdKeyDictionary()


def trainable_blocks(mask: Tensor) -> TrainableBlocks:
    """The blocks of `mask` ([R, C] bool, True = frozen; not wholly frozen) that hold a
    trainable entry. Cached per mask tensor and version."""
    cached = _CACHE.get(mask)
    if cached is not None and cached[0] == mask._version:
        return cached[1]
    blocks = _derive(mask)
    _CACHE[mask] = (mask._version, blocks)
    return blocks


def _block_bounds(size: int) -> list[tuple[int, int]]:
    starts = list(range(0, size, ROW_BLOCK))
    if len(starts) > 1 and size - starts[-1] < ROW_BLOCK:
        starts.pop()  # a short tail joins the block before it: no single-row product
    return [(a, b) for a, b in zip(starts, starts[1:] + [size])]


def _runs(trainable: Tensor) -> tuple[tuple[int, int], ...]:
    """[R] bool (any trainable entry per row) -> runs of whole blocks to compute."""
    flags = trainable.tolist()
    runs: list[list[int]] = []
    for a, b in _block_bounds(len(flags)):
        if any(flags[a:b]):
            if runs and runs[-1][1] == a:
                runs[-1][1] = b
            else:
                runs.append([a, b])
    return tuple((a, b) for a, b in runs)


def _selection(runs: tuple[tuple[int, int], ...], device: torch.device) -> Selection:
    if len(runs) == 1:
        return slice(*runs[0])
    return torch.cat([torch.arange(a, b) for a, b in runs]).to(device)


def _derive(mask: Tensor) -> TrainableBlocks:
    runs = _runs((~mask.cpu()).any(1))
    rows = _selection(runs, mask.device)
    part = mask[rows] if isinstance(rows, slice) else mask.index_select(0, rows)
    return TrainableBlocks(runs, tuple(mask.shape), rows,
                           part.contiguous() if bool(part.any()) else None)


def _worth_skipping(blocks: TrainableBlocks, reduction: int, device: torch.device) -> bool:
    rows, cols = blocks.shape
    calls = 1 + (1 if len(blocks.runs) > _MAX_RUNS else len(blocks.runs))
    saved = reduction * cols * (rows - blocks.computed_rows)
    return saved >= calls * _MIN_SAVED_PER_CALL.get(device.type, 1 << 24)


def masked_product(a: Tensor,                 # [N, R] e.g. dgates
                   b: Tensor,                 # [N, C] what the weight multiplies
                   mask: Optional[Tensor],    # [R, C] bool, True = frozen, or None
                   dtype: torch.dtype,        # of the products and the result
                   mm: Optional[MatMul] = None,  # the backend's GEMM, else torch.mm
                   ) -> Tensor:
    """a^T @ b [R, C] with frozen entries exactly zero, multiplying only the row blocks
    of `mask` that hold a trainable entry."""
    mm = mm or torch.mm
    if mask is None:
        return mm(a.to(dtype).t(), b)
    blocks = trainable_blocks(mask)
    if blocks.everything or not _worth_skipping(blocks, a.shape[0], a.device):
        return mm(a.to(dtype).t(), b).masked_fill_(mask, 0)
    out = b.new_zeros(blocks.shape, dtype=dtype)
    if isinstance(blocks.rows, Tensor) and len(blocks.runs) > _MAX_RUNS:
        part = mm(a.index_select(1, blocks.rows).to(dtype).t(), b)
        if blocks.frozen_part is not None:
            part.masked_fill_(blocks.frozen_part, 0)
        return out.index_copy_(0, blocks.rows, part)
    done = 0  # a few runs: one product per run, reading a through views, into out's rows
    for start, stop in blocks.runs:
        rows = out[start:stop]
        mm(a[:, start:stop].to(dtype).t(), b, out=rows)
        if blocks.frozen_part is not None:
            rows.masked_fill_(blocks.frozen_part[done:done + stop - start], 0)
        done += stop - start
    return out


def prime(mask: Tensor) -> None:
    """Derive (and cache) the blocks of a freshly set weight mask now, at freeze time,
    so the first training step after a freeze pays no host read. (Bias gradients are a
    column sum over dgates, kept whole: see gradients.py.)"""
    if mask.dim() == 2:
        trainable_blocks(mask)

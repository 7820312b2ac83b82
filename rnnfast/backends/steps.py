"""Row bookkeeping shared by every backend: which rows of a (packed) sequence each
time step touches, and where each row's previous state lives.

A layer sees its input as a 2-D tensor of rows, time-major: dense input [T, B, I] is
viewed as [T*B, I]; a PackedSequence's data already is [N, I] with the batch sorted by
decreasing length. Either way step t covers rows offsets[t] .. offsets[t] + sizes[t],
and the rows active at a step are always a prefix of the batch. That single fact is
what lets one recurrence serve dense, packed, forward and reverse directions.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class Steps:
    """Time steps in processing order (reversed for the reverse direction)."""

    offsets: tuple[int, ...]  # first row of each processed step
    sizes: tuple[int, ...]    # number of active batch entries at each processed step
    batch: int                # B: rows of h0/c0
    uniform: bool             # every step has all B rows (dense input)

    def __len__(self) -> int:
        return len(self.sizes)

    def prev_size(self, k: int) -> int:
        """Rows active at the step processed before step k (0 before the first)."""
        return self.sizes[k - 1] if k > 0 else 0


def make_steps(x_shape: Sequence[int], batch_sizes: Optional[Tensor], reverse: bool) -> Steps:
    """x_shape: [T, B, I] when batch_sizes is None, else the packed data's [N, I] with
    batch_sizes: [T] int64 (CPU), non-increasing."""
    if batch_sizes is None:
        return _dense_steps(int(x_shape[0]), int(x_shape[1]), reverse)
    sizes = batch_sizes.tolist()
    offsets, row = [], 0
    for n in sizes:
        offsets.append(row)
        row += n
    batch = sizes[0] if sizes else 0
    uniform = sizes[0] == sizes[-1] if sizes else True
    if reverse:
        offsets, sizes = offsets[::-1], sizes[::-1]
    return Steps(tuple(offsets), tuple(sizes), batch, uniform)


@functools.lru_cache(maxsize=256)
def _dense_steps(seq_len: int, batch: int, reverse: bool) -> Steps:
    """Dense input's steps, kept per shape: a layer call at B=1 T=128 H=64 takes ~90 us in
    C++, and building these tuples took ~4 of the Python around it."""
    offsets = [t * batch for t in range(seq_len)]
    sizes = [batch] * seq_len
    if reverse:
        offsets, sizes = offsets[::-1], sizes[::-1]
    return Steps(tuple(offsets), tuple(sizes), batch, True)


def step_tables(steps: Steps, device: torch.device) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """The GPU kernels' view of packed input: the first row [T] int64 and active rows [T]
    int32 of each processed step, on the device. Dense input needs no tables: the
    kernels compute the rows (None, None)."""
    if steps.uniform:
        return None, None
    offsets = torch.tensor(steps.offsets, dtype=torch.int64).to(device, non_blocking=True)
    sizes = torch.tensor(steps.sizes, dtype=torch.int32).to(device, non_blocking=True)
    return offsets, sizes


def prev_rows(seq: Tensor, init: Tensor, steps: Steps, k: int) -> Tensor:
    """The state the rows active at step k started from: [sizes[k], D].

    seq: [N, D] per-row states written at each step; init: [B, D] initial state.
    Rows that were active at the previous processed step take its output; rows that
    become active for the first time (reverse direction of a packed batch) start from
    init.
    """
    n, n_prev = steps.sizes[k], steps.prev_size(k)
    if n_prev == 0:
        return init[:n]
    prev = seq[steps.offsets[k - 1]:steps.offsets[k - 1] + min(n, n_prev)]
    if n <= n_prev:
        return prev
    return torch.cat([prev, init[n_prev:n]])


def final_rows(seq: Tensor, init: Tensor, steps: Steps) -> Tensor:
    """Each batch entry's state after its last step: [B, D] (a new tensor).

    seq: [N, D] per-row states; init: [B, D]. A row is last active at the processed
    step after which fewer rows stay active (dense input: all rows at the last step)."""
    if len(steps) == 0:
        return init.clone()
    last_off, last_n = steps.offsets[-1], steps.sizes[-1]
    if steps.uniform:
        return seq[last_off:last_off + last_n].clone()
    out = seq.new_empty(steps.batch, seq.shape[1])
    for k, (off, n) in enumerate(zip(steps.offsets, steps.sizes)):
        staying = steps.sizes[k + 1] if k + 1 < len(steps) else 0
        if staying < n:
            out[staying:n] = seq[off + staying:off + n]
    return out


def prev_sequence(seq: Tensor, init: Tensor, steps: Steps) -> Tensor:
    """prev_rows for every step at once, in the row order of seq: [N, D]."""
    if steps.uniform and len(steps) > 0:
        batch = steps.batch
        forward_in_time = len(steps) == 1 or steps.offsets[0] < steps.offsets[1]
        if forward_in_time:
            return torch.cat([init, seq[: seq.shape[0] - batch]])
        return torch.cat([seq[batch:], init])
    out = seq.new_empty(seq.shape)
    for k, (off, n) in enumerate(zip(steps.offsets, steps.sizes)):
        out[off:off + n] = prev_rows(seq, init, steps, k)
    return out


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Cell state, gate activations and gradients are kept in fp32 for 16-bit inputs."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

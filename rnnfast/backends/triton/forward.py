"""Forward: the input projection of all steps as one GEMM, then one launch that runs
the whole recurrence (plan.py says how the work is spread)."""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .. import reference
from ..steps import accumulation_dtype, final_rows, make_steps, step_tables
from .cell import (chunk_words, dot, end_phase, half_bits, held_chunks, load_words,
                   lstm_cell, rounded, step_rows, tagged_word, word_tile, word_value)
from .launch import forward_constexprs, launch
from .plan import TAGGED_WORD_UNITS, Plan, fallback_plans, make_plan


@triton.jit
def _gate_rows(units, H, BLOCK_H: tl.constexpr):
    """The W_hh rows of the units [BLOCK_H], unit-major (unit u's gate g at 4u + g):
    row indices [4 * BLOCK_H] and which of them exist."""
    gate_rows = tl.reshape(units[:, None] + (tl.arange(0, 4) * H)[None, :], (4 * BLOCK_H,))
    gate_mask = tl.reshape(tl.broadcast_to((units < H)[:, None], (BLOCK_H, 4)), (4 * BLOCK_H,))
    return gate_rows, gate_mask


@triton.jit
def _recurrent_gates(h_rows_ptr, active, gate_rows, gate_mask, w_hh_ptr, P, w_held,
                     ACC: tl.constexpr, INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr,
                     INTERPRET_TF32X3: tl.constexpr, W_CHUNKS: tl.constexpr,
                     BATCH_AS_N: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                     BLOCK_K: tl.constexpr):
    """h(t-1) @ W_hh^T for one tile: all four gates of its units in one product
    [BLOCK_B, 4 * BLOCK_H] (so the product's N is 4 * BLOCK_H and the tile can be as
    narrow as 4 units), then split into four [BLOCK_B, BLOCK_H] accumulators i, f, g, o.
    With BATCH_AS_N the product is taken transposed, W_hh h(t-1)^T [4 * BLOCK_H, BLOCK_B]:
    a batch of <= 8 rows is then the mma's N (8 wide), not its M (16 rows, mostly padding).

    h_rows_ptr: [BLOCK_B] pointers to each row's h(t-1) (a row of y or of h0).
    gate_rows, gate_mask: [4 * BLOCK_H] the tile's W_hh rows and which exist (_gate_rows).
    w_held: W_CHUNKS tiles [4 * BLOCK_H, BLOCK_K], those rows' columns c * BLOCK_K + ..,
    held for the whole sequence (cell.held_chunks); () when W_hh is streamed."""
    if BATCH_AS_N:
        acc = tl.zeros((4 * BLOCK_H, BLOCK_B), ACC)
    else:
        acc = tl.zeros((BLOCK_B, 4 * BLOCK_H), ACC)
    if W_CHUNKS > 0:
        for c in tl.static_range(W_CHUNKS):
            acc = _gate_product(acc, h_rows_ptr, active, c * BLOCK_K, P, w_held[c], ACC,
                                INTERPRET_BF16, PRECISION, INTERPRET_TF32X3, BATCH_AS_N,
                                BLOCK_K)
    else:
        for k0 in range(0, P, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            w = tl.load(w_hh_ptr + gate_rows[:, None] * P + cols[None, :],
                        mask=gate_mask[:, None] & (cols < P)[None, :], other=0.0)
            acc = _gate_product(acc, h_rows_ptr, active, k0, P, w, ACC, INTERPRET_BF16,
                                PRECISION, INTERPRET_TF32X3, BATCH_AS_N, BLOCK_K)
    if BATCH_AS_N:
        acc = tl.trans(acc)
    # Column 4u + g, with g = 2a + b, is [.., u, a, b]: split b, then a.
    gates_even, gates_odd = tl.split(tl.reshape(acc, (BLOCK_B, BLOCK_H, 2, 2)))
    acc_i, acc_g = tl.split(gates_even)
    acc_f, acc_o = tl.split(gates_odd)
    return acc_i, acc_f, acc_g, acc_o


@triton.jit
def _gate_product(acc, h_rows_ptr, active, k0, P, w, ACC: tl.constexpr,
                  INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr,
                  INTERPRET_TF32X3: tl.constexpr, BATCH_AS_N: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    """acc + one reduction chunk of the gate product: h(t-1)'s columns k0 .. k0 + BLOCK_K
    (loaded here) times w [4 * BLOCK_H, BLOCK_K], W_hh's rows of the tile at those columns."""
    cols = k0 + tl.arange(0, BLOCK_K)
    col_mask = cols < P
    # .cg: h(t-1) was written by other programs (other SMs) in the previous step.
    if BATCH_AS_N:  # h(t-1)^T [BLOCK_K, BLOCK_B]
        h = tl.load(h_rows_ptr[None, :] + cols[:, None], mask=col_mask[:, None] & active[None, :],
                    other=0.0, cache_modifier=".cg")
    else:
        h = tl.load(h_rows_ptr[:, None] + cols[None, :], mask=active[:, None] & col_mask[None, :],
                    other=0.0, cache_modifier=".cg")
    if BATCH_AS_N:
        acc = dot(w, h, acc, ACC, PRECISION, INTERPRET_BF16, INTERPRET_TF32X3)
    else:
        acc = dot(h, tl.trans(w), acc, ACC, PRECISION, INTERPRET_BF16, INTERPRET_TF32X3)
    return acc


@triton.jit
def _tagged_recurrent_gates(words_ptr, h0_ptr, rows, continuing, starting, P, w_even, w_odd,
                            tag, spin_limit, ACC: tl.constexpr, INTERPRET_BF16: tl.constexpr,
                            PRECISION: tl.constexpr, INTERPRET_TF32X3: tl.constexpr,
                            W_CHUNKS: tl.constexpr, WORD_UNITS: tl.constexpr,
                            BATCH_AS_N: tl.constexpr, BLOCK_B: tl.constexpr,
                            BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """_recurrent_gates with W_hh held, h(t-1) taken from the tagged words the programs
    wrote one step earlier (rows that continue) or from h0 (rows that start). Word j of
    a row holds units 2j and 2j + 1 (16-bit) or unit j (fp32). -> acc_i, acc_f, acc_g,
    acc_o, and whether a wait gave up.

    words_ptr: [B, cdiv(P, WORD_UNITS)] int64, the slot step t-1 wrote (tag `tag`).
    rows, continuing, starting: [BLOCK_B] the tile's batch rows; which continue from
    step t-1; which start from h0. w_even, w_odd: W_CHUNKS tiles [4 * BLOCK_H,
    BLOCK_K // WORD_UNITS], the held W_hh columns of each chunk's even and odd units
    (with one unit a word, w_even alone: all of them)."""
    WORDS: tl.constexpr = BLOCK_K // WORD_UNITS
    row_words = tl.cdiv(P, WORD_UNITS)
    loaded = load_words(words_ptr, rows, continuing, row_words, W_CHUNKS, WORDS, BATCH_AS_N)
    if BATCH_AS_N:
        acc = tl.zeros((4 * BLOCK_H, BLOCK_B), ACC)
    else:
        acc = tl.zeros((BLOCK_B, 4 * BLOCK_H), ACC)
    gave_up = False
    for c in tl.static_range(W_CHUNKS):
        low, waiting = chunk_words(loaded[c], words_ptr, rows, continuing, c, row_words, tag,
                                   spin_limit, WORDS, BATCH_AS_N)
        gave_up = gave_up | waiting
        for part in tl.static_range(WORD_UNITS):
            units = (c * WORDS + tl.arange(0, WORDS)) * WORD_UNITS + part
            h0_ptrs, h0_mask = word_tile(h0_ptr, rows, starting, units, P, BATCH_AS_N)
            h = tl.where(h0_mask, tl.load(h0_ptrs, mask=h0_mask, other=0.0),
                         word_value(low, part, h0_ptr, WORD_UNITS))
            if part == 0:
                w = w_even[c]
            else:
                w = w_odd[c]
            if BATCH_AS_N:
                acc = dot(w, h, acc, ACC, PRECISION, INTERPRET_BF16, INTERPRET_TF32X3)
            else:
                acc = dot(h, tl.trans(w), acc, ACC, PRECISION, INTERPRET_BF16, INTERPRET_TF32X3)
    if BATCH_AS_N:
        acc = tl.trans(acc)
    gates_even, gates_odd = tl.split(tl.reshape(acc, (BLOCK_B, BLOCK_H, 2, 2)))
    acc_i, acc_g = tl.split(gates_even)
    acc_f, acc_o = tl.split(gates_odd)
    return acc_i, acc_f, acc_g, acc_o, gave_up


@triton.jit
def _h_words(h_out, tag, WORD_UNITS: tl.constexpr, BLOCK_B: tl.constexpr,
             BLOCK_H: tl.constexpr):
    """h(t) [BLOCK_B, BLOCK_H] in the layer's dtype -> its tagged words [BLOCK_B,
    BLOCK_H // WORD_UNITS]: units 2j, 2j + 1 in word j (16-bit), or unit j (fp32)."""
    if WORD_UNITS == 1:
        low = h_out.to(tl.int32, bitcast=True)
    else:
        even, odd = tl.split(tl.reshape(half_bits(h_out), (BLOCK_B, BLOCK_H // 2, 2)))
        low = even | (odd << 16)
    return tagged_word(low, tag)


@triton.jit
def _input_gates(xg_ptr, bias_ptr, row_ids, units, mask, H, HAS_BIAS: tl.constexpr,
                 ACC: tl.constexpr):
    """The input's part of the tile's four gate pre-activations, xg + bias: four
    [BLOCK_B, BLOCK_H] in ACC. row_ids: [BLOCK_B] rows of xg; units: [BLOCK_H];
    mask: [BLOCK_B, BLOCK_H] which exist."""
    xg_rows = xg_ptr + row_ids[:, None] * (4 * H) + units[None, :]
    in_i = tl.load(xg_rows, mask=mask, other=0.0).to(ACC)
    in_f = tl.load(xg_rows + H, mask=mask, other=0.0).to(ACC)
    in_g = tl.load(xg_rows + 2 * H, mask=mask, other=0.0).to(ACC)
    in_o = tl.load(xg_rows + 3 * H, mask=mask, other=0.0).to(ACC)
    if HAS_BIAS:
        unit_mask = units < H
        in_i += tl.load(bias_ptr + units, mask=unit_mask, other=0.0)[None, :]
        in_f += tl.load(bias_ptr + H + units, mask=unit_mask, other=0.0)[None, :]
        in_g += tl.load(bias_ptr + 2 * H + units, mask=unit_mask, other=0.0)[None, :]
        in_o += tl.load(bias_ptr + 3 * H + units, mask=unit_mask, other=0.0)[None, :]
    return in_i, in_f, in_g, in_o


@triton.jit
def _lstm_forward_kernel(
    xg_ptr,        # [N, 4H] x @ W_ih^T of every row, bias not added (input dtype, or ACC)
    bias_ptr,      # [4H] ACC: b_ih + b_hh (HAS_BIAS)
    w_hh_ptr,      # [4H, P] recurrent weight, gate rows i, f, g, o
    w_hr_ptr,      # [P, H] projection (HAS_PROJ)
    h0_ptr,        # [B, P] initial hidden state
    c_ptr,         # [B, H] ACC: c0 on entry; each row's last cell state on exit
    y_ptr,         # [N, P] out: h_t of every row
    gates_ptr,     # [N, 4H] ACC out: activated gates (SAVE_GATES); may be xg_ptr itself
    cells_ptr,     # [N, H] ACC out: c_t of every row (SAVE_CELLS)
    hidden_ptr,    # [N, H] out, input dtype: o * tanh(c), the projection's input (HAS_PROJ)
    offsets_ptr,   # [T] int64: first row of each processed step (PACKED)
    sizes_ptr,     # [T] int32: active rows of each processed step (PACKED)
    barrier_ptr,   # [batch blocks + 1] int32 zeros: each batch block's arrival counter,
                   # then the wait-timeout flag (USE_BARRIER or TAGGED)
    words_ptr,     # [2, B, cdiv(P, WORD_UNITS)] int64 zeros: h(t) as tagged words, step t
                   # in slot t % 2 (TAGGED)
    T, B, H, P,
    REVERSE: tl.constexpr, PACKED: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_PROJ: tl.constexpr, SAVE_GATES: tl.constexpr, SAVE_CELLS: tl.constexpr,
    USE_BARRIER: tl.constexpr, SPIN_LIMIT: tl.constexpr, ONE_TILE: tl.constexpr,
    W_CHUNKS: tl.constexpr, TAGGED: tl.constexpr, WORD_UNITS: tl.constexpr,
    BATCH_AS_N: tl.constexpr, ACC: tl.constexpr,
    INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr, INTERPRET_TF32X3: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    batch_block = tl.program_id(0)
    first_tile = tl.program_id(1)
    tile_stride = tl.num_programs(1)
    rows = batch_block * BLOCK_B + tl.arange(0, BLOCK_B)
    unit_tiles = tl.cdiv(H, BLOCK_H)
    out_tiles = tl.cdiv(P, BLOCK_H)
    timeout_ptr = barrier_ptr + tl.num_programs(0)
    arrivals_ptr = barrier_ptr + batch_block
    arrived = tl.full((), 0, tl.int32)  # barrier arrivals expected so far

    # With ONE_TILE each program owns at most one unit tile. It may hold that tile's
    # W_hh rows on chip for the whole sequence (W_CHUNKS > 0); its cell state stays
    # in registers from step to step; and it loads each step's input part (xg + bias)
    # during the previous step, before the barrier wait. h(t-1) is then the only load
    # a step waits for after the barrier.
    own_units = first_tile * BLOCK_H + tl.arange(0, BLOCK_H)
    own_rows, own_rows_mask = _gate_rows(own_units, H, BLOCK_H)
    # With tagged h a 16-bit chunk's even units (W_hh columns) are one product, its odd
    # units another (_tagged_recurrent_gates); WORD_UNITS is 1 otherwise.
    k_index = tl.arange(0, BLOCK_K // WORD_UNITS) * WORD_UNITS
    w_held = held_chunks(w_hh_ptr + own_rows[:, None] * P + k_index[None, :], k_index[None, :],
                         own_rows_mask[:, None], P, 1, W_CHUNKS, BLOCK_K)
    if TAGGED and WORD_UNITS == 2:  # the odd units' columns, as the words split them
        w_odd = held_chunks(w_hh_ptr + own_rows[:, None] * P + k_index[None, :] + 1,
                            k_index[None, :] + 1, own_rows_mask[:, None], P, 1, W_CHUNKS, BLOCK_K)
    else:
        w_odd = ()
    row_words = tl.cdiv(P, WORD_UNITS)
    spin_limit = tl.full((), SPIN_LIMIT, tl.int32)  # 0 once a wait has given up
    own_c_rows = c_ptr + rows[:, None] * H + own_units[None, :]
    if ONE_TILE:
        offset, size, _, _ = step_rows(offsets_ptr, sizes_ptr, 0, T, B, REVERSE, PACKED)
        first_mask = (rows < size)[:, None] & (own_units < H)[None, :]
        next_i, next_f, next_g, next_o = _input_gates(xg_ptr, bias_ptr, offset + rows, own_units,
                                                      first_mask, H, HAS_BIAS, ACC)
        next_c = tl.load(own_c_rows, mask=first_mask, other=0.0)

    for k in range(T):
        offset, size, offset_prev, size_prev = step_rows(offsets_ptr, sizes_ptr, k, T, B,
                                                         REVERSE, PACKED)
        active = rows < size
        row_ids = offset + rows  # int64
        # Rows active one step earlier continue from its output; the others start from h0.
        h_rows_ptr = tl.where(rows < size_prev, y_ptr + (offset_prev + rows) * P, h0_ptr + rows * P)

        for tile in range(first_tile, unit_tiles, tile_stride):
            units = tile * BLOCK_H + tl.arange(0, BLOCK_H)
            unit_mask = units < H
            mask = active[:, None] & unit_mask[None, :]
            if ONE_TILE:
                in_i, in_f, in_g, in_o = next_i, next_f, next_g, next_o
            else:
                in_i, in_f, in_g, in_o = _input_gates(xg_ptr, bias_ptr, row_ids, units, mask, H,
                                                      HAS_BIAS, ACC)
            if TAGGED:  # step k - 1 wrote its words, tagged k, in slot (k - 1) % 2
                pre_i, pre_f, pre_g, pre_o, gave_up = _tagged_recurrent_gates(
                    words_ptr + ((k + 1) % 2) * B * row_words, h0_ptr, rows,
                    active & (rows < size_prev), active & (rows >= size_prev), P, w_held, w_odd,
                    k, spin_limit, ACC, INTERPRET_BF16, PRECISION, INTERPRET_TF32X3, W_CHUNKS,
                    WORD_UNITS, BATCH_AS_N, BLOCK_B, BLOCK_H, BLOCK_K)
                if gave_up:  # report it, and wait no more: the results are wrong anyway
                    spin_limit = 0
                    tl.atomic_xchg(timeout_ptr, 1, sem="relaxed", scope="gpu")
            else:
                gate_rows, gate_mask = _gate_rows(units, H, BLOCK_H)
                pre_i, pre_f, pre_g, pre_o = _recurrent_gates(
                    h_rows_ptr, active, gate_rows, gate_mask, w_hh_ptr, P, w_held, ACC,
                    INTERPRET_BF16, PRECISION, INTERPRET_TF32X3, W_CHUNKS, BATCH_AS_N, BLOCK_B,
                    BLOCK_H, BLOCK_K)
            # The cell state lives in c_ptr in ACC: a row's slot holds c0 until its first
            # step, then its latest c (so that it ends as c_n).
            c_rows = c_ptr + rows[:, None] * H + units[None, :]
            if ONE_TILE:
                c_prev = next_c
            else:
                c_prev = tl.load(c_rows, mask=mask, other=0.0)
            gate_i, gate_f, gate_g, gate_o, c, h = lstm_cell(
                pre_i + in_i, pre_f + in_f, pre_g + in_g, pre_o + in_o, c_prev)
            tl.store(c_rows, c, mask=mask)
            if ONE_TILE:
                next_c = c
            if SAVE_GATES:
                gates_rows = gates_ptr + row_ids[:, None] * (4 * H) + units[None, :]
                tl.store(gates_rows, gate_i, mask=mask)
                tl.store(gates_rows + H, gate_f, mask=mask)
                tl.store(gates_rows + 2 * H, gate_g, mask=mask)
                tl.store(gates_rows + 3 * H, gate_o, mask=mask)
            if SAVE_CELLS:
                tl.store(cells_ptr + row_ids[:, None] * H + units[None, :], c, mask=mask)
            if HAS_PROJ:
                tl.store(hidden_ptr + row_ids[:, None] * H + units[None, :],
                         rounded(h, hidden_ptr, INTERPRET_BF16), mask=mask)
            else:
                h_out = rounded(h, y_ptr, INTERPRET_BF16)
                tl.store(y_ptr + row_ids[:, None] * P + units[None, :], h_out, mask=mask)
                if TAGGED:  # single-copy-atomic 8-byte stores: tag and data land together
                    word_cols = tile * (BLOCK_H // WORD_UNITS) + tl.arange(0, BLOCK_H // WORD_UNITS)
                    tl.atomic_xchg(words_ptr + (k % 2) * B * row_words
                                   + rows[:, None] * row_words + word_cols[None, :],
                                   _h_words(h_out, k + 1, WORD_UNITS, BLOCK_B, BLOCK_H),
                                   mask=active[:, None] & (word_cols < row_words)[None, :],
                                   sem="relaxed", scope="gpu")

        if ONE_TILE:
            # The next step's input part, loaded now so that the waits below hide its
            # latency. After the last step it loads that step's rows again (in bounds,
            # unused). Step rows are disjoint, so gates written over xg this step (fp32)
            # never reach these rows. Rows that start at the next step take c0 from c_ptr
            # (slots no step has written yet); the others keep this step's c.
            k_next = tl.minimum(k + 1, T - 1)
            offset_next, size_next, _, _ = step_rows(offsets_ptr, sizes_ptr, k_next, T, B,
                                                     REVERSE, PACKED)
            next_mask = (rows < size_next)[:, None] & (own_units < H)[None, :]
            next_i, next_f, next_g, next_o = _input_gates(xg_ptr, bias_ptr, offset_next + rows,
                                                          own_units, next_mask, H, HAS_BIAS, ACC)
            starting = next_mask & (rows >= size)[:, None]
            next_c = tl.where(starting, tl.load(own_c_rows, mask=starting, other=0.0), next_c)

        if HAS_PROJ:
            # y = hidden @ W_hr^T needs every unit of the step: a second phase.
            arrived += tile_stride
            end_phase(arrivals_ptr, arrived, timeout_ptr, USE_BARRIER, SPIN_LIMIT)
            for tile in range(first_tile, out_tiles, tile_stride):
                out_cols = tile * BLOCK_H + tl.arange(0, BLOCK_H)
                out_mask = out_cols < P
                acc = tl.zeros((BLOCK_B, BLOCK_H), ACC)
                for k0 in range(0, H, BLOCK_K):
                    cols = k0 + tl.arange(0, BLOCK_K)
                    col_mask = cols < H
                    hid = tl.load(hidden_ptr + row_ids[:, None] * H + cols[None, :],
                                  mask=active[:, None] & col_mask[None, :], other=0.0,
                                  cache_modifier=".cg")
                    w = tl.load(w_hr_ptr + out_cols[:, None] * H + cols[None, :],
                                mask=out_mask[:, None] & col_mask[None, :], other=0.0)
                    acc = dot(hid, tl.trans(w), acc, ACC, PRECISION, INTERPRET_BF16,
                              INTERPRET_TF32X3)
                tl.store(y_ptr + row_ids[:, None] * P + out_cols[None, :],
                         rounded(acc, y_ptr, INTERPRET_BF16), mask=active[:, None] & out_mask[None, :])
        arrived += tile_stride
        end_phase(arrivals_ptr, arrived, timeout_ptr, USE_BARRIER, SPIN_LIMIT)


def forward(
    x: Tensor,                      # [T, B, I] dense, or packed data [N, I]
    batch_sizes: Optional[Tensor],  # [T] int64 CPU for packed input, else None
    h0: Tensor,                     # [B, P]
    c0: Tensor,                     # [B, H]
    w_ih: Tensor,                   # [4H, I]
    w_hh: Tensor,                   # [4H, P]
    b_ih: Optional[Tensor],         # [4H]
    b_hh: Optional[Tensor],         # [4H]
    w_hr: Optional[Tensor],         # [P, H]
    reverse: bool,
    save: str,                      # "all", "cells" or "none"
    plan: Optional[Plan] = None,    # tests force a launch plan; normally make_plan decides
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Same contract as backends.reference.forward."""
    dtype, acc = x.dtype, accumulation_dtype(x.dtype)
    steps = make_steps(x.shape, batch_sizes, reverse)
    x2d = x.reshape(-1, x.shape[-1])
    rows, hidden_size, out_size = x2d.shape[0], w_hh.shape[0] // 4, w_hh.shape[1]
    batch = steps.batch

    xg = x2d @ w_ih.t()  # the input projection of every step: one GEMM, off the sequential path
    y = x2d.new_empty(rows, out_size)
    c_state = c0.to(acc, copy=True).contiguous()
    save_all = save == "all"
    gates = None
    if save_all:  # fp32/fp64: the kernel writes the activated gates over xg itself
        gates = xg if acc == dtype else xg.new_empty(rows, 4 * hidden_size, dtype=acc)
    cells = x2d.new_empty(rows, hidden_size, dtype=acc) if save != "none" else None
    hidden = x2d.new_empty(rows, hidden_size) if w_hr is not None else None
    if rows > 0:
        plans = [plan] if plan else fallback_plans(
            make_plan(batch, hidden_size, out_size, len(steps), x.device, dtype, "forward"))
        offsets, sizes = step_tables(steps, x.device)
        bias = b_ih.to(acc) + b_hh.to(acc) if b_ih is not None else None
        unused = c_state  # pointer for arguments a constexpr switches off
        pointers = [
            xg, bias if bias is not None else unused, w_hh.contiguous(),
            w_hr.contiguous() if w_hr is not None else unused, h0.contiguous(), c_state, y,
            gates if gates is not None else unused, cells if cells is not None else unused,
            hidden if hidden is not None else unused,
            offsets if offsets is not None else unused, sizes if sizes is not None else unused,
        ]

        def arguments(plan: Plan):
            barrier = torch.zeros(plan.batch_blocks + 1, dtype=torch.int32, device=x.device)
            # Zeros: no word shows a tag (steps tag from 1) before this launch writes it.
            words = torch.zeros(2 * batch * triton.cdiv(out_size, TAGGED_WORD_UNITS[dtype.itemsize])
                                if plan.tagged else 1, dtype=torch.int64, device=x.device)
            constexprs = forward_constexprs(
                plan, dtype, reverse=reverse, packed=offsets is not None,
                has_bias=bias is not None, has_proj=w_hr is not None, save=save)
            return ([*pointers, barrier, words, len(steps), batch, hidden_size, out_size],
                    constexprs, barrier)

        if launch(_lstm_forward_kernel, plans, arguments, x.device, "LSTM forward") is None:
            return reference.forward(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                     reverse, save)
    empty = lambda: x2d.new_empty(0)  # one per slot: op outputs may not alias each other
    return (
        y.view(*x.shape[:-1], out_size),
        final_rows(y, h0, steps),
        c_state.to(dtype),
        gates if gates is not None else empty(),
        cells if cells is not None else empty(),
        hidden if save_all and hidden is not None else empty(),
    )

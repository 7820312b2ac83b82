"""Backward: one launch runs the reverse-time chain (dh, dc -> gate gradients of every
row), then the input and parameter gradients are GEMMs over all steps, shared with the
reference backend and skipped or masked as `needs` and the freeze masks say."""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..gradients import parameter_and_input_grads
from ..steps import make_steps, step_tables
from .cell import (chunk_words, dot, end_phase, half_bits, held_chunks, load_words,
                   lstm_cell_backward, rounded, step_rows, tagged_word, word_value)
from .. import reference
from .launch import backward_constexprs, launch
from .plan import Plan, fallback_plans, make_plan


@triton.jit
def _incoming_dh(dh_ptr, dy_ptr, dy_total_ptr, w_hr_ptr, rows, row_ids, active, units, unit_mask,
                 write_dy_total, H, P,
                 HAS_DY: tl.constexpr, HAS_PROJ: tl.constexpr, NEED_DY_TOTAL: tl.constexpr,
                 ACC: tl.constexpr, PRECISION: tl.constexpr, INTERPRET_TF32X3: tl.constexpr,
                 BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """dL/dh of the tile's units at this step, [BLOCK_B, BLOCK_H] in ACC, but for dy
    without a projection (_saved_tile loads that part, ahead of the barrier).

    The gradient reaching y is the carried dh plus dy; with a projection it is taken
    back through W_hr (dh_units = (dh + dy) @ W_hr), and `write_dy_total` programs
    store (dh + dy) itself for dW_hr."""
    if HAS_PROJ:
        dh = tl.zeros((BLOCK_B, BLOCK_H), ACC)
        for k0 in range(0, P, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_mask = cols < P
            mask = active[:, None] & col_mask[None, :]
            d = tl.load(dh_ptr + rows[:, None] * P + cols[None, :], mask=mask, other=0.0,
                        cache_modifier=".cg")
            if HAS_DY:
                d += tl.load(dy_ptr + row_ids[:, None] * P + cols[None, :], mask=mask,
                             other=0.0).to(ACC)
            if NEED_DY_TOTAL:
                tl.store(dy_total_ptr + row_ids[:, None] * P + cols[None, :], d,
                         mask=mask & write_dy_total)
            w = tl.load(w_hr_ptr + cols[:, None] * H + units[None, :],
                        mask=col_mask[:, None] & unit_mask[None, :], other=0.0).to(ACC)
            dh = dot(d, w, dh, ACC, PRECISION, False, INTERPRET_TF32X3)  # operands in ACC
    else:
        dh = tl.load(dh_ptr + rows[:, None] * P + units[None, :],
                     mask=active[:, None] & unit_mask[None, :], other=0.0, cache_modifier=".cg")
    return dh


@triton.jit
def _saved_tile(gates_ptr, cells_ptr, c0_ptr, dc_ptr, dy_ptr, offset, offset_prev, size_prev,
                rows, units, mask, dc_mask, H, HAS_DY_UNITS: tl.constexpr, ACC: tl.constexpr):
    """What a tile's gate gradients need besides the incoming dh, none of it written by
    other programs: the saved gates i, f, g, o, c(t), c(t-1), the dc carried in dc_ptr,
    and dy (HAS_DY_UNITS: dy without a projection, else zeros); [BLOCK_B, BLOCK_H] each.
    offset, offset_prev, size_prev: the step's first row, and the step before's first row
    and active rows (step_rows); mask: [BLOCK_B, BLOCK_H] which exist; dc_mask: those
    whose dc is read from dc_ptr."""
    row_ids = offset + rows
    # Rows active one step earlier read c(t-1) from its cells; the others start from c0.
    c_prev_rows = tl.where(rows < size_prev, cells_ptr + (offset_prev + rows) * H,
                           c0_ptr + rows * H)
    gates_rows = gates_ptr + row_ids[:, None] * (4 * H) + units[None, :]
    gate_i = tl.load(gates_rows, mask=mask, other=0.0)
    gate_f = tl.load(gates_rows + H, mask=mask, other=0.0)
    gate_g = tl.load(gates_rows + 2 * H, mask=mask, other=0.0)
    gate_o = tl.load(gates_rows + 3 * H, mask=mask, other=0.0)
    c = tl.load(cells_ptr + row_ids[:, None] * H + units[None, :], mask=mask, other=0.0)
    c_prev = tl.load(c_prev_rows[:, None] + units[None, :], mask=mask, other=0.0)
    dc = tl.load(dc_ptr + rows[:, None] * H + units[None, :], mask=dc_mask, other=0.0)
    if HAS_DY_UNITS:  # P == H: dy's columns are the units
        dy = tl.load(dy_ptr + row_ids[:, None] * H + units[None, :], mask=mask, other=0.0).to(ACC)
    else:
        dy = tl.zeros_like(c)
    return gate_i, gate_f, gate_g, gate_o, c, c_prev, dc, dy


@triton.jit
def _dh_product(acc, chain_rows_ptr, active, k0, H, w, INTERPRET_BF16: tl.constexpr,
                ACC: tl.constexpr, PRECISION: tl.constexpr, INTERPRET_TF32X3: tl.constexpr,
                BATCH_AS_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + one reduction chunk of dh(t-1) = dgates @ W_hh: the rows' gate gradients
    k0 .. k0 + BLOCK_K (loaded here) times w [BLOCK_K, BLOCK_H], W_hh's rows k0 .. at
    the tile's columns. BATCH_AS_N: acc and the product transposed, [BLOCK_H, BLOCK_B].
    chain_rows_ptr: [BLOCK_B] pointers to each row's gate gradients in W_hh's dtype (fp16 /
    bf16: tensor cores) or in ACC (fp32, fp64: W_hh is ACC too)."""
    cols = k0 + tl.arange(0, BLOCK_K)
    col_mask = cols < 4 * H
    # .cg: the gate gradients were written by other programs (other SMs) this step.
    if BATCH_AS_N:  # dgates^T [BLOCK_K, BLOCK_B]
        d = tl.load(chain_rows_ptr[None, :] + cols[:, None],
                    mask=col_mask[:, None] & active[None, :], other=0.0, cache_modifier=".cg")
    else:
        d = tl.load(chain_rows_ptr[:, None] + cols[None, :],
                    mask=active[:, None] & col_mask[None, :], other=0.0, cache_modifier=".cg")
    if BATCH_AS_N:
        acc = dot(tl.trans(w), d, acc, ACC, PRECISION, INTERPRET_BF16, INTERPRET_TF32X3)
    else:
        acc = dot(d, w, acc, ACC, PRECISION, INTERPRET_BF16, INTERPRET_TF32X3)
    return acc


@triton.jit
def _tagged_dh_product(words_ptr, rows, active, H, w_low, w_high, tag, spin_limit,
                       like_ptr, ACC: tl.constexpr, INTERPRET_BF16: tl.constexpr,
                       PRECISION: tl.constexpr, INTERPRET_TF32X3: tl.constexpr,
                       W_CHUNKS: tl.constexpr, BATCH_AS_N: tl.constexpr,
                       BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """dh(t-1) = dgates @ W_hh for one output tile (as _dh_product's chunks sum it)
    from the step's tagged gate-gradient words: word 2u + p of a row holds unit u's
    gates 2p (bits 0-15) and 2p + 1 (bits 16-31), in like_ptr's 16-bit dtype.
    -> acc [BLOCK_B, BLOCK_H] ([BLOCK_H, BLOCK_B] with BATCH_AS_N) in ACC, and whether
    a wait gave up.

    words_ptr: [B, 2H] int64, the slot this step's phase 1 wrote (tag `tag`).
    w_low, w_high: W_CHUNKS tiles [BLOCK_K // 2, BLOCK_H], the held W_hh rows of each
    chunk's words' low and high gates at the tile's columns."""
    WORDS: tl.constexpr = BLOCK_K // 2
    loaded = load_words(words_ptr, rows, active, 2 * H, W_CHUNKS, WORDS, BATCH_AS_N)
    if BATCH_AS_N:
        acc = tl.zeros((BLOCK_H, BLOCK_B), ACC)
    else:
        acc = tl.zeros((BLOCK_B, BLOCK_H), ACC)
    gave_up = False
    for c in tl.static_range(W_CHUNKS):
        low, waiting = chunk_words(loaded[c], words_ptr, rows, active, c, 2 * H, tag,
                                   spin_limit, WORDS, BATCH_AS_N)
        gave_up = gave_up | waiting
        for part in tl.static_range(2):
            d = word_value(low, part, like_ptr, 2)
            if part == 0:
                w = w_low[c]
            else:
                w = w_high[c]
            if BATCH_AS_N:
                acc = dot(tl.trans(w), d, acc, ACC, PRECISION, INTERPRET_BF16, INTERPRET_TF32X3)
            else:
                acc = dot(d, w, acc, ACC, PRECISION, INTERPRET_BF16, INTERPRET_TF32X3)
    return acc, gave_up


@triton.jit
def _lstm_backward_kernel(
    dy_ptr,        # [N, P] dL/dy of every row (HAS_DY)
    gates_ptr,     # [N, 4H] ACC: activated gates saved by the forward
    cells_ptr,     # [N, H] ACC: c_t of every row
    c0_ptr,        # [B, H] ACC: initial cell state
    w_hh_ptr,      # [4H, P] recurrent weight
    w_hr_ptr,      # [P, H] projection (HAS_PROJ)
    dh_ptr,        # [B, P] ACC: dL/dh_n on entry; the dh carried between steps (but for
                   # ONE_PHASE, which carries it in registers)
    dc_ptr,        # [B, H] ACC: dL/dc_n on entry; the dc carried between steps (but for
                   # ONE_TILE, which carries it in registers)
    dh0_ptr,       # [B, P] ACC zeros: receives dL/dh0 of rows that start at a step
    dc0_ptr,       # [B, H] ACC zeros: receives dL/dc0
    dgates_ptr,    # [N, 4H] ACC out: dL/d(gate pre-activations) of every row
    chain_ptr,     # [2, B, 4H] W_hh's dtype: the step's gate gradients rounded for the
                   # dh product (TENSOR_CORE_CHAIN; the second buffer for ONE_PHASE)
    dy_total_ptr,  # [N, P] ACC out: dh + dy of every row (NEED_DY_TOTAL, for dW_hr)
    offsets_ptr,   # [T] int64: first row of each processed step (PACKED)
    sizes_ptr,     # [T] int32: active rows of each processed step (PACKED)
    barrier_ptr,   # [batch blocks + 1] int32 zeros: each batch block's arrival counter,
                   # then the wait-timeout flag (USE_BARRIER or TAGGED)
    words_ptr,     # [2, B, 2H] int64 zeros: the step's 16-bit gate gradients as tagged
                   # words (_tagged_dh_product), step s (counting back) in slot s % 2 (TAGGED)
    T, B, H, P,
    REVERSE: tl.constexpr, PACKED: tl.constexpr, HAS_DY: tl.constexpr,
    HAS_PROJ: tl.constexpr, NEED_DY_TOTAL: tl.constexpr, USE_BARRIER: tl.constexpr,
    SPIN_LIMIT: tl.constexpr, ONE_TILE: tl.constexpr, W_CHUNKS: tl.constexpr,
    TAGGED: tl.constexpr, BATCH_AS_N: tl.constexpr, TENSOR_CORE_CHAIN: tl.constexpr, INTERPRET_BF16: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr, INTERPRET_TF32X3: tl.constexpr,
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
    HAS_DY_UNITS: tl.constexpr = HAS_DY and not HAS_PROJ
    # With ONE_TILE and no projection, the dh a program computes in phase 2 is exactly
    # what its own phase 1 needs at the next step (its output columns are its units):
    # dh stays in registers and a step has one barrier, after phase 1. The 16-bit gate
    # gradients then alternate between two buffers by step parity, so that a program
    # already in the next step's phase 1 never overwrites what a slower one still reads.
    ONE_PHASE: tl.constexpr = ONE_TILE and not HAS_PROJ

    # With ONE_TILE each program owns at most one unit tile (phase 1) and one output
    # tile (phase 2). It may hold its W_hh columns, all 4H rows, on chip for the whole
    # sequence (W_CHUNKS > 0); its dc stays in registers from step to step; and
    # it loads the next step's saved gates, cells and dy before the barrier waits. The
    # incoming dh is then the only load a step waits for after the barrier.
    own = first_tile * BLOCK_H + tl.arange(0, BLOCK_H)  # its units, and its output columns
    # With TAGGED (one phase, 16-bit, W_hh held) the held rows follow the words: chunk c
    # holds words c * BLOCK_K // 2 .. of the rows, word 2u + p (unit u's gates 2p and
    # 2p + 1) taking W_hh row 2p * H + u (low: gate i or g) and that + H (high: f or o).
    tl.static_assert(not TAGGED or (ONE_PHASE and TENSOR_CORE_CHAIN and W_CHUNKS > 0))
    if TAGGED:
        word_index = tl.arange(0, BLOCK_K // 2)
        unit_index = word_index // 2
        low_rows = (word_index % 2) * (2 * H) + unit_index
        w_held = held_chunks(w_hh_ptr + low_rows[:, None] * P + own[None, :], unit_index[:, None],
                             (own < P)[None, :], H, P, W_CHUNKS, BLOCK_K // 4)
        w_high = held_chunks(w_hh_ptr + (low_rows + H)[:, None] * P + own[None, :],
                             unit_index[:, None], (own < P)[None, :], H, P, W_CHUNKS, BLOCK_K // 4)
    else:
        k_index = tl.arange(0, BLOCK_K)
        w_held = held_chunks(w_hh_ptr + k_index[:, None] * P + own[None, :], k_index[:, None],
                             (own < P)[None, :], 4 * H, P, W_CHUNKS, BLOCK_K)
        w_high = ()
    spin_limit = tl.full((), SPIN_LIMIT, tl.int32)  # 0 once a wait has given up
    step_words = 2 * H * B  # one slot of words_ptr
    if ONE_TILE:
        offset, size, offset_prev, size_prev = step_rows(offsets_ptr, sizes_ptr, T - 1, T, B,
                                                         REVERSE, PACKED)
        first_mask = (rows < size)[:, None] & (own < H)[None, :]
        next_i, next_f, next_g, next_o, next_c, next_c_prev, next_dc, next_dy = _saved_tile(
            gates_ptr, cells_ptr, c0_ptr, dc_ptr, dy_ptr, offset, offset_prev, size_prev, rows,
            own, first_mask, first_mask, H, HAS_DY_UNITS, ACC)
        if ONE_PHASE:
            next_dh = tl.load(dh_ptr + rows[:, None] * P + own[None, :], mask=first_mask,
                              other=0.0)

    for step in range(T):
        k = T - 1 - step  # the forward's processing order, walked backwards
        offset, size, offset_prev, size_prev = step_rows(offsets_ptr, sizes_ptr, k, T, B,
                                                         REVERSE, PACKED)
        active = rows < size
        row_ids = offset + rows
        # Rows that were active one step earlier hand dh, dc on to it; the others
        # started at this step, from (h0, c0).
        carried = tl.minimum(size, size_prev)
        to_state = rows < carried
        to_initial = (rows >= carried) & active
        chain_step_ptr = chain_ptr
        if ONE_PHASE:
            chain_step_ptr = chain_ptr + (step % 2) * B * (4 * H)

        # Phase 1: gate gradients of this program's units.
        for tile in range(first_tile, unit_tiles, tile_stride):
            units = tile * BLOCK_H + tl.arange(0, BLOCK_H)
            unit_mask = units < H
            mask = active[:, None] & unit_mask[None, :]
            if ONE_PHASE:
                dh = next_dh
            else:
                dh = _incoming_dh(dh_ptr, dy_ptr, dy_total_ptr, w_hr_ptr, rows, row_ids,
                                  active, units, unit_mask, tile == 0, H, P, HAS_DY, HAS_PROJ,
                                  NEED_DY_TOTAL, ACC, PRECISION, INTERPRET_TF32X3, BLOCK_B,
                                  BLOCK_H, BLOCK_K)
            if ONE_TILE:
                gate_i, gate_f, gate_g, gate_o, c, c_prev, dc, dy = (
                    next_i, next_f, next_g, next_o, next_c, next_c_prev, next_dc, next_dy)
            else:  # loaded after dh's product (with a projection): fewer live registers
                gate_i, gate_f, gate_g, gate_o, c, c_prev, dc, dy = _saved_tile(
                    gates_ptr, cells_ptr, c0_ptr, dc_ptr, dy_ptr, offset, offset_prev,
                    size_prev, rows, units, mask, mask, H, HAS_DY_UNITS, ACC)
            d_i, d_f, d_g, d_o, dc_prev = lstm_cell_backward(
                gate_i, gate_f, gate_g, gate_o, c, c_prev, dh + dy, dc)
            dgates_rows = dgates_ptr + row_ids[:, None] * (4 * H) + units[None, :]
            tl.store(dgates_rows, d_i, mask=mask)
            tl.store(dgates_rows + H, d_f, mask=mask)
            tl.store(dgates_rows + 2 * H, d_g, mask=mask)
            tl.store(dgates_rows + 3 * H, d_o, mask=mask)
            if TAGGED:  # single-copy-atomic 8-byte stores: tag and data land together
                low_if = (half_bits(rounded(d_i, w_hh_ptr, INTERPRET_BF16))
                          | (half_bits(rounded(d_f, w_hh_ptr, INTERPRET_BF16)) << 16))
                low_go = (half_bits(rounded(d_g, w_hh_ptr, INTERPRET_BF16))
                          | (half_bits(rounded(d_o, w_hh_ptr, INTERPRET_BF16)) << 16))
                words = tl.reshape(tl.join(tagged_word(low_if, step + 1),
                                           tagged_word(low_go, step + 1)), (BLOCK_B, 2 * BLOCK_H))
                word_cols = 2 * tile * BLOCK_H + tl.arange(0, 2 * BLOCK_H)
                tl.atomic_xchg(words_ptr + (step % 2) * step_words + rows[:, None] * (2 * H)
                               + word_cols[None, :], words,
                               mask=active[:, None] & (word_cols < 2 * H)[None, :],
                               sem="relaxed", scope="gpu")
            elif TENSOR_CORE_CHAIN:
                # Rounded once here for every program's dh product (which reads half
                # the bytes of the fp32 gradients). One buffer serves every step where
                # the barrier after phase 2 keeps the next step's writes after this
                # step's reads; two alternate with ONE_PHASE.
                chain_rows = chain_step_ptr + rows[:, None] * (4 * H) + units[None, :]
                tl.store(chain_rows, rounded(d_i, chain_ptr, INTERPRET_BF16), mask=mask)
                tl.store(chain_rows + H, rounded(d_f, chain_ptr, INTERPRET_BF16), mask=mask)
                tl.store(chain_rows + 2 * H, rounded(d_g, chain_ptr, INTERPRET_BF16), mask=mask)
                tl.store(chain_rows + 3 * H, rounded(d_o, chain_ptr, INTERPRET_BF16), mask=mask)
            if ONE_TILE:
                next_dc = dc_prev
            else:
                tl.store(dc_ptr + rows[:, None] * H + units[None, :], dc_prev,
                         mask=to_state[:, None] & unit_mask[None, :])
            tl.store(dc0_ptr + rows[:, None] * H + units[None, :], dc_prev,
                     mask=to_initial[:, None] & unit_mask[None, :])

        if ONE_TILE:
            # The next step's inputs, loaded now so that the waits below hide their
            # latency (after the last step: that step's rows again, in bounds, unused).
            # Rows carried to it keep this step's dc; rows that start there (counting
            # back) read dL/dc_n from dc_ptr, which no step writes in this form.
            k_next = tl.maximum(k - 1, 0)
            offset_next, size_next, offset_prev_next, size_prev_next = step_rows(
                offsets_ptr, sizes_ptr, k_next, T, B, REVERSE, PACKED)
            next_mask = (rows < size_next)[:, None] & (own < H)[None, :]
            carried_dc = next_dc
            next_i, next_f, next_g, next_o, next_c, next_c_prev, next_dc, next_dy = _saved_tile(
                gates_ptr, cells_ptr, c0_ptr, dc_ptr, dy_ptr, offset_next, offset_prev_next,
                size_prev_next, rows, own, next_mask, next_mask & (rows >= carried)[:, None],
                H, HAS_DY_UNITS, ACC)
            next_dc = tl.where(to_state[:, None], carried_dc, next_dc)
        arrived += tile_stride
        end_phase(arrivals_ptr, arrived, timeout_ptr, USE_BARRIER, SPIN_LIMIT)

        # Phase 2: dh(t-1) = dgates @ W_hh needs every gate of the step. Accumulated in
        # ACC; with 16-bit weights it reads the gradients' copies rounded to the
        # weights' dtype, so that the product runs on tensor cores (the error this adds
        # over T = 1024 steps stays within DESIGN.md §6: tests/test_triton.py measures it).
        if TENSOR_CORE_CHAIN:
            chain_rows_ptr = chain_step_ptr + rows * (4 * H)
        else:
            chain_rows_ptr = dgates_ptr + row_ids * (4 * H)
        for tile in range(first_tile, out_tiles, tile_stride):
            out_cols = tile * BLOCK_H + tl.arange(0, BLOCK_H)
            out_mask = out_cols < P
            if BATCH_AS_N:
                acc = tl.zeros((BLOCK_H, BLOCK_B), ACC)
            else:
                acc = tl.zeros((BLOCK_B, BLOCK_H), ACC)
            if TAGGED:  # this step's phase 1 wrote its words, tagged step + 1
                acc, gave_up = _tagged_dh_product(
                    words_ptr + (step % 2) * step_words, rows, active, H, w_held, w_high,
                    step + 1, spin_limit, w_hh_ptr, ACC, INTERPRET_BF16, PRECISION,
                    INTERPRET_TF32X3, W_CHUNKS, BATCH_AS_N, BLOCK_B, BLOCK_H, BLOCK_K)
                if gave_up:  # report it, and wait no more: the results are wrong anyway
                    spin_limit = 0
                    tl.atomic_xchg(timeout_ptr, 1, sem="relaxed", scope="gpu")
            elif W_CHUNKS > 0:
                for c in tl.static_range(W_CHUNKS):
                    acc = _dh_product(acc, chain_rows_ptr, active, c * BLOCK_K, H, w_held[c],
                                      INTERPRET_BF16, ACC, PRECISION, INTERPRET_TF32X3,
                                      BATCH_AS_N, BLOCK_K)
            else:
                for k0 in range(0, 4 * H, BLOCK_K):
                    cols = k0 + tl.arange(0, BLOCK_K)
                    w = tl.load(w_hh_ptr + cols[:, None] * P + out_cols[None, :],
                                mask=(cols < 4 * H)[:, None] & out_mask[None, :], other=0.0)
                    acc = _dh_product(acc, chain_rows_ptr, active, k0, H, w, INTERPRET_BF16,
                                      ACC, PRECISION, INTERPRET_TF32X3, BATCH_AS_N, BLOCK_K)
            if BATCH_AS_N:
                acc = tl.trans(acc)
            dh_rows = dh_ptr + rows[:, None] * P + out_cols[None, :]
            if ONE_PHASE:
                # Rows carried on keep their dh in registers; rows that start at the
                # next step (counting back) read dL/dh_n from dh_ptr, unwritten here.
                starting = (rows >= carried)[:, None] & next_mask
                next_dh = tl.where(to_state[:, None], acc,
                                   tl.load(dh_rows, mask=starting, other=0.0))
            else:
                tl.store(dh_rows, acc, mask=to_state[:, None] & out_mask[None, :])
            tl.store(dh0_ptr + rows[:, None] * P + out_cols[None, :], acc,
                     mask=to_initial[:, None] & out_mask[None, :])
        if not ONE_PHASE:
            arrived += tile_stride
            end_phase(arrivals_ptr, arrived, timeout_ptr, USE_BARRIER, SPIN_LIMIT)


def backward(
    dy: Optional[Tensor],           # [.., P] like y, or None
    dh_n: Optional[Tensor],         # [B, P] or None
    dc_n: Optional[Tensor],         # [B, H] or None
    x: Optional[Tensor],            # layer input, saved only when dW_ih is needed
    batch_sizes: Optional[Tensor],  # [T] int64 CPU, or None
    h0: Optional[Tensor],           # [B, P], saved only when dW_hh is needed
    c0: Tensor,                     # [B, H]
    w_ih: Optional[Tensor],         # [4H, I], saved only when dx is needed
    w_hh: Tensor,                   # [4H, P]
    w_hr: Optional[Tensor],         # [P, H]
    y: Optional[Tensor],            # [.., P], saved only when dW_hh is needed
    gates: Tensor,                  # [N, 4H] activated gates (accumulation dtype)
    cells: Tensor,                  # [N, H] c_t of every row (accumulation dtype)
    hidden: Optional[Tensor],       # [N, H] pre-projection hidden, when dW_hr is needed
    reverse: bool,
    needs: list[bool],              # dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, dW_hr
    frozen: list[Optional[Tensor]],  # masks (True = frozen) for w_ih, w_hh, b_ih, b_hh, w_hr
    x_shape: list[int],
    plan: Optional[Plan] = None,    # tests force a launch plan; normally make_plan decides
) -> tuple[list[Optional[Tensor]], Tensor]:
    """Same contract as backends.reference.backward."""
    acc, dtype = gates.dtype, w_hh.dtype
    steps = make_steps(x_shape, batch_sizes, reverse)
    rows, hidden_size = gates.shape[0], gates.shape[1] // 4
    out_size, batch = w_hh.shape[1], steps.batch
    dh_state = (dh_n.to(acc, copy=True).contiguous() if dh_n is not None
                else gates.new_zeros(batch, out_size))
    dc_state = (dc_n.to(acc, copy=True).contiguous() if dc_n is not None
                else gates.new_zeros(batch, hidden_size))
    dh0 = gates.new_zeros(batch, out_size)
    dc0 = gates.new_zeros(batch, hidden_size)
    dgates = gates.new_empty(rows, 4 * hidden_size)
    tensor_core_chain = dtype in (torch.float16, torch.bfloat16)
    chain = w_hh.new_empty(2, batch, 4 * hidden_size) if tensor_core_chain else dgates
    need_dy_total = needs[7]
    dy_total = gates.new_empty(rows, out_size) if need_dy_total else None
    if rows > 0:
        plans = [plan] if plan else fallback_plans(
            make_plan(batch, hidden_size, out_size, len(steps), gates.device, dtype, "backward"))
        offsets, sizes = step_tables(steps, gates.device)
        unused = dgates  # pointer for arguments a constexpr switches off
        pointers = [
            dy.reshape(rows, out_size).contiguous() if dy is not None else unused,
            gates, cells, c0.to(acc).contiguous(), w_hh.contiguous(),
            w_hr.contiguous() if w_hr is not None else unused,
            dh_state, dc_state, dh0, dc0, dgates, chain,
            dy_total if dy_total is not None else unused,
            offsets if offsets is not None else unused, sizes if sizes is not None else unused,
        ]

        def arguments(plan: Plan):
            barrier = torch.zeros(plan.batch_blocks + 1, dtype=torch.int32, device=gates.device)
            # Zeros: no word shows a tag (steps tag from 1) before this launch writes it.
            words = torch.zeros(2 * batch * 2 * hidden_size if plan.tagged else 1,
                                dtype=torch.int64, device=gates.device)
            constexprs = backward_constexprs(
                plan, dtype, reverse=reverse, packed=offsets is not None, has_dy=dy is not None,
                has_proj=w_hr is not None, need_dy_total=need_dy_total)
            return ([*pointers, barrier, words, len(steps), batch, hidden_size, out_size],
                    constexprs, barrier)

        if launch(_lstm_backward_kernel, plans, arguments, gates.device, "LSTM backward") is None:
            return reference.backward(dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr,
                                      y, gates, cells, hidden, reverse, needs, frozen, x_shape)
    grads = parameter_and_input_grads(dgates, dh0, dc0, dy_total, x, h0, w_ih, y, hidden,
                                      steps, needs, frozen, x_shape, dtype)
    return grads, dgates

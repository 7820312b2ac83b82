"""A latency model of the Triton kernels per launch plan: the expected time of one
recurrent step and of a whole layer, from the bytes each program moves through L2, the
barriers it waits at and its matrix-multiply work, for comparison with cuDNN until a
GPU measures the real thing.

Per step and phase, a program pays one dependent L2 round trip (it reads h(t-1) that
other programs wrote), one grid barrier when the plan has one, and the larger of its
L2 traffic on the critical path and its multiply time (with held weights read from
shared memory). The input projection and the backward's weight and
input gradients are large GEMMs off the sequential path, counted at a fraction of peak.
The figures below are datasheet numbers (H100/H200 SXM: dense bf16 ~990 TFLOP/s, fp32
~67) and assumptions (L2 bandwidth and latency, barrier cost) to be replaced by
measurements; the model ranks plans and sizes, it does not predict to the microsecond.
The GPU's figures live in rnnfast/backends/latency.py, shared with the CUDA model.
"""
from __future__ import annotations

import torch
import triton

from ..latency import H100, Gpu, ModelledTime, gemm_rate as _gemm_rate
from .plan import TAGGED_WORD_UNITS, Plan

__all__ = ["H100", "Gpu", "ModelledTime", "forward_time", "backward_time"]


def _multiply_time(plan: Plan, dtype: torch.dtype, weight_rows: int, reduction: int,
                   gpu: Gpu) -> float:
    """Seconds of one program's product of a weight slice (`weight_rows` rows: 4 x
    BLOCK_H gate rows in the forward, BLOCK_H columns in the backward and the
    projection) with the tile's rows over `reduction`. Tensor cores run m16n8 tiles:
    the weights are M and the batch N (batch_as_n), or the batch M and the weights N,
    each padded up to the tile, and an SM's four tensor cores need four warps with a
    tile each. fp32 runs as tf32x3 (three tf32 mma per product, tf32 at
    gpu.tf32_fraction of the 16-bit rate: launch.kernel_dtypes); fp64 on its own units."""
    rows = plan.block_b
    if dtype == torch.float64:
        return 2 * rows * weight_rows * reduction / (gpu.fp64_flops / gpu.sms)
    m, n = (weight_rows, rows) if plan.batch_as_n else (rows, weight_rows)
    tiles = triton.cdiv(m, 16) * triton.cdiv(n, 8)
    padded_flops = 2 * tiles * 16 * 8 * reduction
    rate = gpu.tensor_flops / gpu.sms * min(4, plan.num_warps, tiles) / 4
    if dtype == torch.float32:
        rate = rate * gpu.tf32_fraction / 3
    return padded_flops / rate


def _step_time(plan: Plan, critical_bytes: float, multiply_s: float, held_bytes: float,
               phases: int, gpu: Gpu) -> float:
    """One step: per phase a dependent L2 round trip (the rows other programs wrote) and
    a grid barrier when the plan has one, or for a tagged plan the wait for the words
    themselves, then the larger of the L2 traffic on the critical path and the
    products, which read held weights from shared memory. Loads issued before the
    barrier wait (Plan.one_tile) are off the critical path."""
    if plan.tagged:
        latency = phases * gpu.tagged_wait_s
    else:
        latency = phases * (gpu.l2_round_trip_s + (gpu.barrier_s if plan.use_barrier else 0.0))
    programs = plan.batch_blocks * plan.programs_per_batch_block
    shared_s = held_bytes / (gpu.smem_bytes_per_clock_per_sm * gpu.clock_hz)
    return latency + max(critical_bytes / gpu.l2_bytes_per_s_per_sm,
                         critical_bytes * programs / gpu.l2_bytes_per_s,
                         multiply_s + shared_s)


def forward_time(plan: Plan, batch: int, hidden: int, out_size: int, input_size: int,
                 seq_len: int, dtype: torch.dtype, gpu: Gpu = H100) -> ModelledTime:
    item = dtype.itemsize
    acc = 8 if dtype == torch.float64 else 4
    tiles = triton.cdiv(triton.cdiv(hidden, plan.block_h), plan.programs_per_batch_block)
    padded_k = (plan.held_chunks or triton.cdiv(out_size, plan.block_k)) * plan.block_k
    rows = plan.block_b
    weights = 4 * plan.block_h * out_size * item
    inputs = rows * 4 * plan.block_h * item                  # xg (the bias stays in L1)
    # h(t-1) in and h(t) out: as 8-byte tagged words (TAGGED_WORD_UNITS units each) beside
    # y's h out, or through y alone.
    h_words = 8 // TAGGED_WORD_UNITS[item] if plan.tagged else 0
    per_tile = (rows * out_size * (h_words or item)          # h(t-1), re-read for each tile
                + (0 if plan.weights_resident else weights)
                + rows * 4 * plan.block_h * acc              # activated gates out
                + rows * plan.block_h * (2 * acc + item + h_words)  # c out, c_t saved, h out
                + (0 if plan.one_tile else rows * plan.block_h * acc + inputs))  # c in, xg
    critical = tiles * per_tile
    moved = critical + (inputs if plan.one_tile else 0)
    multiply = tiles * _multiply_time(plan, dtype, 4 * plan.block_h, padded_k, gpu)
    held = 4 * plan.block_h * padded_k * item if plan.weights_resident else 0
    phases = 1
    if out_size != hidden:  # the projection phase: hidden in, W_hr streamed, y out
        out_tiles = triton.cdiv(triton.cdiv(out_size, plan.block_h), plan.programs_per_batch_block)
        projection = out_tiles * (rows * hidden * item + plan.block_h * hidden * item)
        critical += projection
        moved += projection
        multiply += out_tiles * _multiply_time(plan, dtype, plan.block_h, hidden, gpu)
        phases = 2
    step = _step_time(plan, critical, multiply, held, phases, gpu)
    gemm_flops = 2 * seq_len * batch * 4 * hidden * input_size
    programs = plan.batch_blocks * plan.programs_per_batch_block
    barriers = phases if plan.counts_arrivals else 0
    return ModelledTime(step, seq_len * step + gpu.launch_s,
                        gemm_flops / (_gemm_rate(dtype, gpu) * gpu.gemm_efficiency),
                        int(moved * programs), barriers)


def backward_time(plan: Plan, batch: int, hidden: int, out_size: int, input_size: int,
                  seq_len: int, dtype: torch.dtype, gpu: Gpu = H100) -> ModelledTime:
    """The reverse-time chain (gate gradients, then dh = dgates @ W_hh: tensor cores,
    tf32x3 for fp32; tagged: the gate gradients through tagged words, no barrier) and
    the dW_ih, dW_hh, dx GEMMs."""
    item = dtype.itemsize
    acc = 8 if dtype == torch.float64 else 4
    rows = plan.block_b
    unit_tiles = triton.cdiv(triton.cdiv(hidden, plan.block_h), plan.programs_per_batch_block)
    out_tiles = triton.cdiv(triton.cdiv(out_size, plan.block_h), plan.programs_per_batch_block)
    # The dh product's gate gradients: 16-bit copies for 16-bit layers (tagged: in 8-byte
    # words of two), else the ACC ones.
    chain = 8 // TAGGED_WORD_UNITS[item] if plan.tagged else item if item == 2 else 0
    # One tile a program without a projection keeps dh in registers: one phase a step.
    phases = 1 if plan.one_tile and out_size == hidden else 2
    # Phase 1 per tile: dh in (but with one phase) and 4 gate gradients out (and their
    # 16-bit copies), after the barrier; the 4 saved gates, c, c(t-1), dc and dy are
    # loaded ahead of it with one_tile (dc then stays in registers), else after it, and
    # dc stored.
    saved = rows * plan.block_h * (7 * acc + item)
    phase1 = unit_tiles * rows * plan.block_h * ((3 + phases) * acc + 4 * chain)
    if not plan.one_tile:
        phase1 += unit_tiles * (saved + rows * plan.block_h * acc)
    # Phase 2 per output tile: every gate gradient of the rows, and W_hh's columns
    # (held in shared memory, or streamed).
    padded_k = (plan.held_chunks or triton.cdiv(4 * hidden, plan.block_k)) * plan.block_k
    weights = 4 * hidden * plan.block_h * item
    phase2 = out_tiles * (rows * 4 * hidden * (chain or acc)
                          + (0 if plan.weights_resident else weights))
    held = padded_k * plan.block_h * item if plan.weights_resident else 0
    multiply = out_tiles * _multiply_time(plan, dtype, plan.block_h, padded_k, gpu)
    step = _step_time(plan, phase1 + phase2, multiply, held, phases, gpu)
    moved = phase1 + phase2 + (unit_tiles * saved if plan.one_tile else 0)
    gemm_flops = 2 * 2 * seq_len * batch * 4 * hidden * (input_size + out_size)
    programs = plan.batch_blocks * plan.programs_per_batch_block
    barriers = phases if plan.counts_arrivals else 0
    return ModelledTime(step, seq_len * step + gpu.launch_s,
                        gemm_flops / (_gemm_rate(dtype, gpu) * gpu.gemm_efficiency),
                        int(moved * programs), barriers)

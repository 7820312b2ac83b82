"""A latency model of the Triton kernels per launch plan: the expected time of one
recurrent step and of a whole layer, from the bytes each program moves through L2, the
barriers it waits at and its matrix-multiply work, for comparison with cuDNN until a
GPU measures the real thing.

Per step and phase, a program pays one dependent L2 round trip (it reads h(t-1) that
other programs wrote), one grid barrier when the plan has one, and the larger of its
L2 traffic and its multiply time. The input projection and the backward's weight and
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
from .plan import Plan

__all__ = ["H100", "Gpu", "ModelledTime", "forward_time", "backward_time"]


def _multiply_rate(plan: Plan, dtype: torch.dtype, columns: int, gpu: Gpu) -> float:
    """FLOP/s of one program's tl.dot with `columns` output columns: tensor cores (a warp
    issues m16n8 tiles; an SM's four tensor cores need four warps with a tile each) for
    16-bit operands, and for fp32 as tf32x3 (three tf32 mma per product, tf32 at
    gpu.tf32_fraction of the 16-bit rate: launch.kernel_dtypes); fp64 on its own units."""
    if dtype == torch.float64:
        return gpu.fp64_flops / gpu.sms
    mma_tiles = (plan.block_b // 16) * (columns // 8)
    rate = gpu.tensor_flops / gpu.sms * min(4, plan.num_warps, mma_tiles) / 4
    return rate * gpu.tf32_fraction / 3 if dtype == torch.float32 else rate


def _step_time(plan: Plan, program_bytes: float, program_flops: float, rate: float,
               phases: int, gpu: Gpu) -> float:
    latency = phases * (gpu.l2_round_trip_s + (gpu.barrier_s if plan.use_barrier else 0.0))
    programs = plan.batch_blocks * plan.programs_per_batch_block
    throughput = max(program_bytes / gpu.l2_bytes_per_s_per_sm,
                     program_bytes * programs / gpu.l2_bytes_per_s,
                     program_flops / rate)
    return latency + throughput


def forward_time(plan: Plan, batch: int, hidden: int, out_size: int, input_size: int,
                 seq_len: int, dtype: torch.dtype, gpu: Gpu = H100) -> ModelledTime:
    item = dtype.itemsize
    acc = 8 if dtype == torch.float64 else 4
    tiles = triton.cdiv(triton.cdiv(hidden, plan.block_h), plan.programs_per_batch_block)
    padded_k = triton.cdiv(out_size, plan.block_k) * plan.block_k
    rows = plan.block_b
    per_tile = (rows * out_size * item                      # h(t-1), re-read for each tile
                + (0 if plan.weights_resident else 4 * plan.block_h * out_size * item)
                + rows * 4 * plan.block_h * (item + acc)    # xg in, activated gates out
                + rows * plan.block_h * (3 * acc + item))   # c in and out, c_t saved, h out
    program_bytes = tiles * per_tile
    program_flops = tiles * 2 * rows * 4 * plan.block_h * padded_k
    phases = 1
    if out_size != hidden:  # the projection phase: hidden in, W_hr streamed, y out
        out_tiles = triton.cdiv(triton.cdiv(out_size, plan.block_h), plan.programs_per_batch_block)
        program_bytes += out_tiles * (rows * hidden * item + plan.block_h * hidden * item)
        program_flops += out_tiles * 2 * rows * plan.block_h * hidden
        phases = 2
    rate = _multiply_rate(plan, dtype, 4 * plan.block_h, gpu)  # all gates in one product
    step = _step_time(plan, program_bytes, program_flops, rate, phases, gpu)
    gemm_flops = 2 * seq_len * batch * 4 * hidden * input_size
    programs = plan.batch_blocks * plan.programs_per_batch_block
    return ModelledTime(step, seq_len * step + gpu.launch_s,
                        gemm_flops / (_gemm_rate(dtype, gpu) * gpu.gemm_efficiency),
                        int(program_bytes * programs), phases if plan.use_barrier else 0)


def backward_time(plan: Plan, batch: int, hidden: int, out_size: int, input_size: int,
                  seq_len: int, dtype: torch.dtype, gpu: Gpu = H100) -> ModelledTime:
    """The reverse-time chain (gate gradients, then dh = dgates @ W_hh: tensor cores for
    16-bit layers, FFMA for fp32) and the dW_ih, dW_hh, dx GEMMs."""
    item = dtype.itemsize
    acc = 8 if dtype == torch.float64 else 4
    rows = plan.block_b
    unit_tiles = triton.cdiv(triton.cdiv(hidden, plan.block_h), plan.programs_per_batch_block)
    out_tiles = triton.cdiv(triton.cdiv(out_size, plan.block_h), plan.programs_per_batch_block)
    # Phase 1 per tile: dh, dy, 4 gates, c, c(t-1), dc in and out, 4 gate gradients out.
    phase1 = unit_tiles * rows * plan.block_h * (acc * 13 + item)
    # Phase 2 per output tile: every gate gradient of the rows, and W_hh's columns.
    phase2 = out_tiles * (rows * 4 * hidden * acc + 4 * hidden * plan.block_h * item)
    flops = out_tiles * 2 * rows * 4 * hidden * plan.block_h
    rate = _multiply_rate(plan, dtype, plan.block_h, gpu)
    step = _step_time(plan, phase1 + phase2, flops, rate, 2, gpu)
    gemm_flops = 2 * 2 * seq_len * batch * 4 * hidden * (input_size + out_size)
    programs = plan.batch_blocks * plan.programs_per_batch_block
    return ModelledTime(step, seq_len * step + gpu.launch_s,
                        gemm_flops / (_gemm_rate(dtype, gpu) * gpu.gemm_efficiency),
                        int((phase1 + phase2) * programs), 2 if plan.use_barrier else 0)


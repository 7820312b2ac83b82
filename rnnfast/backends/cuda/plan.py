"""How the CUDA kernels spread a layer over the GPU, and whether it fits on chip.

Both kernels are persistent and cooperative: `blocks` <= SM count blocks of 256
threads, all resident, meeting at grid.sync() after every phase of every step.

- forward: block j owns `units` hidden units (their 4 * units rows of W_hh, held in
  shared memory for the whole sequence) and, with a projection, `proj_cols` rows of
  W_hr. `units` is the smallest multiple of 4 that covers H with at most one block per
  SM: 4 units are 16 gate columns, one tensor-core tile.
- backward: block j owns `units` hidden units for the cell gradient and `proj_cols`
  columns of W_hh (all 4H rows) for the dh chain; as many blocks as the SMs allow,
  so that each holds the smallest slice.

A layer whose slice does not fit in a block's shared memory is not run by these
kernels: the backend falls back (cuda/__init__.py) and says so once. The layout sizes
below mirror csrc/lstm_common.cuh (forward_layout, backward_layout) byte for byte;
tests/test_cuda_sources.py compares the two.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

# Constants of csrc/lstm_common.cuh.
THREADS = 256
TILE_ROWS = 16
CHUNK = 128
MAX_ITEMS = 8
ALIGN = 128

# H100 SXM: what the plan is tested against on CPU (tests/test_cuda_backend.py).
H100_SMS = 132
H100_SMEM_PER_BLOCK = 227 * 1024  # opt-in maximum (228 KB per SM, 1 KB reserved)


@dataclass(frozen=True)
class Plan:
    blocks: int         # grid size (<= SMs)
    units: int          # hidden units per block
    proj_cols: int      # projection / dh columns per block (0: forward without projection)
    smem_bytes: int     # dynamic shared memory per block
    tensor_cores: bool  # forward recurrent product on tensor cores (fp16/bf16)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(a: int, b: int) -> int:
    return _cdiv(a, b) * b


def _align(n: int) -> int:
    return _round_up(n, ALIGN)


def _fma_ksplit(cols: int) -> int:
    return max(1, min(8, THREADS // (TILE_ROWS * cols)))


def _fma_fits(cols: int) -> bool:
    return TILE_ROWS * cols <= THREADS * MAX_ITEMS


def forward_smem_bytes(hidden: int, out_size: int, has_proj: bool, itemsize: int, units: int,
                       proj_cols: int) -> int:
    """csrc/lstm_common.cuh forward_layout(...).bytes."""
    warps = THREADS // 32
    if itemsize == 2:  # tensor cores: padded to 16, +8 elements per leading dimension
        cols = _round_up(4 * units, 16)
        k_pad = _round_up(out_size, 16)
        w_ld = cols + 8
        pcols = _round_up(proj_cols, 16) if has_proj else 0
        hk_pad = _round_up(hidden, 16) if has_proj else 0
        wr_ld = pcols + 8
        a_bytes = TILE_ROWS * (max(k_pad, hk_pad) + 8) * itemsize
        part_ld = max(cols, pcols) + 4
        ksplit = max(1, min(warps // (cols // 16), k_pad // 16))
        proj_ksplit = max(1, min(warps // (pcols // 16), hk_pad // 16)) if has_proj else 1
    else:
        cols, k_pad, w_ld = 4 * units, out_size, 4 * units
        pcols = proj_cols if has_proj else 0
        hk_pad = hidden if has_proj else 0
        wr_ld = pcols
        a_bytes = TILE_ROWS * CHUNK * 4
        part_ld = max(cols, pcols)
        ksplit = _fma_ksplit(cols)
        proj_ksplit = _fma_ksplit(pcols) if has_proj else 1
    return (_align(k_pad * w_ld * itemsize) + _align(hk_pad * wr_ld * itemsize) + _align(a_bytes)
            + _align(max(ksplit, proj_ksplit) * TILE_ROWS * part_ld * 4))


def backward_smem_bytes(hidden: int, out_size: int, has_proj: bool, itemsize: int, units: int,
                        proj_cols: int) -> int:
    """csrc/lstm_common.cuh backward_layout(...).bytes."""
    ks = max(_fma_ksplit(units) if has_proj else 1, _fma_ksplit(proj_cols))
    return (_align(4 * hidden * proj_cols * itemsize)
            + (_align(out_size * units * itemsize) if has_proj else 0)
            + _align(TILE_ROWS * CHUNK * 4) + _align(ks * TILE_ROWS * max(units, proj_cols) * 4))


def _too_big(what: str, need: int, have: int) -> str:
    return (f"{what} needs {need} bytes of shared memory per block, more than the "
            f"{have} this GPU allows")


def forward_plan(hidden: int, out_size: int, has_proj: bool, itemsize: int, sms: int,
                 smem_per_block: int) -> Union[Plan, str]:
    """The forward plan for H, P on a GPU with `sms` SMs, or why it cannot run there."""
    units = _round_up(_cdiv(hidden, sms), 4)
    blocks = _cdiv(hidden, units)
    proj_cols = _cdiv(out_size, blocks) if has_proj else 0
    if itemsize == 4 and not (_fma_fits(4 * units) and _fma_fits(proj_cols)):
        return f"hidden_size {hidden} needs {units} units per block, more than the fp32 kernel's 32"
    smem = forward_smem_bytes(hidden, out_size, has_proj, itemsize, units, proj_cols)
    if smem > smem_per_block:
        return _too_big(f"the forward's W_hh slice (H={hidden}, P={out_size}, {units} units "
                        f"per block on {blocks} blocks)", smem, smem_per_block)
    return Plan(blocks, units, proj_cols, smem, itemsize == 2)


def backward_plan(hidden: int, out_size: int, has_proj: bool, itemsize: int, sms: int,
                  smem_per_block: int) -> Union[Plan, str]:
    """The backward plan for H, P on a GPU with `sms` SMs, or why it cannot run there."""
    blocks = min(sms, max(hidden, out_size))
    units, proj_cols = _cdiv(hidden, blocks), _cdiv(out_size, blocks)
    blocks = max(_cdiv(hidden, units), _cdiv(out_size, proj_cols))  # no idle blocks
    if not (_fma_fits(units) and _fma_fits(proj_cols)):
        return f"hidden_size {hidden} needs {units} units per block, more than the kernel's 128"
    smem = backward_smem_bytes(hidden, out_size, has_proj, itemsize, units, proj_cols)
    if smem > smem_per_block:
        return _too_big(f"the backward's W_hh columns (H={hidden}, P={out_size}, {proj_cols} "
                        f"columns per block on {blocks} blocks)", smem, smem_per_block)
    return Plan(blocks, units, proj_cols, smem, False)

"""The CUDA C++ sources without a GPU (DESIGN.md §6):

- every csrc/*.cu compiles with nvcc for sm_80 and sm_90a (`-c`, so ptxas runs and
  register/shared-memory/resource errors show), warnings as errors, no register spills,
  with the same defines torch's extension build adds;
- the binding compiles against this torch's headers (syntax only: a CPU torch cannot
  link it);
- the kernels' index logic and cell math, which live in __host__ __device__ code
  (csrc/lstm_common.cuh), run on the CPU in csrc/tests/host_check.cu in the kernels'
  loop and summation order and match the reference backend; its shared-memory layout
  matches the Python plan byte for byte; the mma fragment addressing agrees with the
  PTX ISA's layouts (emulated ldmatrix / mma).

Tests that need nvcc (or a C++ compiler) skip with the reason.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import shutil
import subprocess
import sysconfig

import pytest
import torch
from torch.testing import assert_close

from rnnfast.backends import reference
from rnnfast.backends.cuda import plan as cuda_plan

from helpers import layer_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
KERNELS = sorted(glob.glob(os.path.join(CSRC, "*.cu")))
ARCHS = ("80", "90a")  # what setup.py builds: Hopper machine code as sm_90a
# What torch.utils.cpp_extension adds to every nvcc command of the real build.
TORCH_NVCC_DEFINES = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                      "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
                      "--expt-relaxed-constexpr"]


def _nvcc():
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    found = shutil.which("nvcc")
    if found is None and os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        found = os.path.join(cuda_home, "bin", "nvcc")
    return found


NVCC = _nvcc()
CXX = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (no CUDA toolkit)")


def test_there_are_kernels_to_compile():
    names = {os.path.basename(k) for k in KERNELS}
    assert {"lstm_forward.cu", "lstm_backward.cu"} <= names


@needs_nvcc
@pytest.mark.parametrize("source", KERNELS, ids=os.path.basename)
def test_kernel_compiles_for_sm80_and_sm90(source, tmp_path):
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    cmd = [NVCC, "-std=c++17", "-O3", "-c", source, "-o", str(tmp_path / "kernel.o"), *gencode,
           *TORCH_NVCC_DEFINES, "--Werror", "all-warnings", "-Xptxas", "-v"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    # ptxas -v reports each kernel per architecture: all of them, none spilling.
    entries = re.findall(r"Compiling entry function '(\w+)' for 'sm_(\w+)'", log)
    assert {arch for _, arch in entries} == set(ARCHS), log
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert spills and all(s == ("0", "0") for s in spills), log


@pytest.mark.skipif(CXX is None or NVCC is None, reason="needs a C++ compiler and the CUDA headers")
def test_binding_compiles_against_this_torch(tmp_path):
    from torch.utils.cpp_extension import include_paths
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
             os.path.dirname(os.path.dirname(os.path.realpath(NVCC))), "/usr/local/cuda"]
    includes = [os.path.join(h, "include") for h in homes if h]
    cuda_include = next((i for i in includes
                         if os.path.exists(os.path.join(i, "cuda_runtime_api.h"))), None)
    if cuda_include is None:
        pytest.skip(f"no cuda_runtime_api.h under {includes}")
    # A CPU build of torch ships the c10/cuda headers but not this generated one.
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    cmd = [CXX, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
           "-DTORCH_EXTENSION_NAME=_C", f"-I{tmp_path}",
           *[f"-isystem{p}" for p in include_paths()], f"-isystem{cuda_include}",
           f"-isystem{sysconfig.get_paths()['include']}", os.path.join(CSRC, "binding.cpp")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------
# Host-side check of the kernels' logic.

@pytest.fixture(scope="module")
def host_check(tmp_path_factory):
    compiler = CXX or NVCC
    if compiler is None:
        pytest.skip("no C++ compiler or nvcc to build csrc/tests/host_check.cu")
    exe = tmp_path_factory.mktemp("host_check") / "host_check"
    source = os.path.join(CSRC, "tests", "host_check.cu")
    if compiler == NVCC:
        cmd = [NVCC, "-std=c++17", "-O1", "--Werror", "all-warnings", "-o", str(exe), source]
    else:
        cmd = [compiler, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", "-x", "c++", "-o",
               str(exe), source]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return str(exe)


def test_shared_memory_layout_matches_the_python_plan(host_check):
    """Shared-memory bytes of both directions, whether each direction's kernel takes the
    register split (reg_split_ok) and the backward's the reduce split (reduce_ok), in
    C++ and in plan.py, over splits of every form: grid, cluster, multicast, cluster
    forwards with W_hh k-tiles in registers, grid backwards with W_hh^T k-tiles in
    registers, and reduce splits (some the kernels refuse: with registers, multicast,
    a projection, clusters that do not divide the slices, a last CTA with no column)."""
    configs = [(H, P, proj, itemsize, units, cols, rows, cluster, multicast, regs, 0, 1, 0)
               for H, P in [(20, 20), (20, 11), (96, 96), (768, 768), (1024, 512), (9, 5)]
               for proj in (0, 1) for itemsize in (2, 4)
               for units, cols in [(4, 3), (8, 6), (12, 40), (32, 128), (48, 0), (136, 8)]
               for rows, cluster, multicast, regs in [
                   (8, 0, 0, 0), (16, 4, 0, 0), (64, 0, 0, 0), (256, 0, 0, 0), (8, 0, 8, 0),
                   (64, 0, 2, 0), (8, 16, 0, 1), (8, 16, 0, 11), (8, 16, 0, 12), (16, 16, 0, 5),
                   (8, 0, 0, 7), (8, 0, 4, 21), (8, 0, 0, 24), (8, 0, 0, 25), (16, 0, 0, 5),
                   (8, 16, 0, 16), (8, 16, 0, 17)]]
    configs += [(H, H, proj, itemsize, units, units, rows, 0, multicast, regs, ctas, slices, 0)
                for H in (9, 20, 500, 1024) for proj in (0, 1) for itemsize in (2, 4)
                for units, rows in [(4, 8), (8, 64), (16, 128), (12, 24)]
                for multicast, regs, ctas, slices in [
                    (0, 0, 2, 64), (0, 0, 4, 64), (0, 0, 8, 64), (0, 0, 4, 6), (0, 0, 3, 6),
                    (0, 0, 8, 8), (2, 0, 4, 64), (0, 5, 4, 64), (0, 0, 16, 64)]]
    # Row passes of the forward (some refused: with a projection, multicast or registers,
    # passes not a multiple of 8 or not below the batch block's rows).
    configs += [(H, H, proj, itemsize, 16, 16, rows, cluster, multicast, regs, 0, 64, passes)
                for H in (20, 1024) for proj in (0, 1) for itemsize in (2, 4)
                for rows, passes in [(256, 128), (512, 128), (136, 72), (64, 60), (64, 64)]
                for cluster, multicast, regs in [(0, 0, 0), (0, 2, 0), (0, 0, 3), (16, 0, 0)]]
    stdin = "".join(" ".join(map(str, c)) + "\n" for c in configs)
    result = subprocess.run([host_check, "layout"], input=stdin, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    handled = {"forward": 0, "backward": 0, "reduce": 0, "passes": 0}
    for config, line in zip(configs, result.stdout.splitlines(), strict=True):
        (H, P, proj, itemsize, units, cols, rows, cluster, multicast, regs, ctas, slices,
         passes) = config
        fwd, bwd, fwd_ok, bwd_ok, reduce_ok, passes_ok = map(int, line.split())
        assert fwd == cuda_plan.forward_smem_bytes(H, P, bool(proj), itemsize, units, cols, rows,
                                                   bool(cluster), bool(multicast), regs,
                                                   passes), config
        assert bwd == cuda_plan.backward_smem_bytes(H, P, bool(proj), itemsize, units, cols,
                                                    rows, bool(cluster), bool(multicast),
                                                    regs, ctas), config
        assert reduce_ok == cuda_plan.reduce_ok(H, slices, bool(proj), bool(cluster), regs,
                                                multicast, ctas), config
        handled["reduce"] += reduce_ok and ctas > 0
        assert passes_ok == cuda_plan.passes_ok(passes, rows, bool(proj), bool(cluster),
                                                multicast, regs), config
        handled["passes"] += passes_ok and passes > 0
        for direction, ok, products in (
                ("forward", fwd_ok, cuda_plan.forward_products),
                ("backward", bwd_ok, cuda_plan.backward_products)):
            product, _ = products(H, P, bool(proj), itemsize, units, cols, rows, bool(cluster),
                                  regs, ctas if direction == "backward" else passes)
            reduce = ctas if direction == "backward" else 0
            assert ok == cuda_plan.reg_split_ok(direction, product, units, itemsize,
                                                bool(cluster), bool(proj), regs, reduce), (
                direction, config)
            handled[direction] += ok and regs > 0
    assert min(handled.values()) >= 10, handled  # register and reduce splits the kernels take


def test_cluster_exchange_sends_every_column_once_and_the_bytes_the_mbarrier_expects(host_check):
    """Every cluster split plan.py can make, forward and backward, 16- and 32-bit: each
    CTA's st.async words (lstm_device.cuh exchange_step) stay word-aligned inside the
    operand's k columns and off every other CTA's columns, every peer column arrives
    exactly once, and the bytes add up to what the receiver's mbarrier expects
    (lstm_common.cuh peer_row_bytes): a miscount would be a timed-out wait on the GPU."""
    result = subprocess.run([host_check, "exchange"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "cover every peer column once and add up to the expected bytes" in result.stdout


def test_fragment_addressing_agrees_with_the_ptx_layouts(host_check):
    """The kernels' shared-memory addresses for ldmatrix, the mma operand registers and
    the accumulators (lstm_common.cuh) load and store exactly what the PTX ISA's
    fragment layouts say, in both orientations and for 16-bit and tf32 tiles (checked by
    emulating ldmatrix and mma on the host), and the warps' split of every product the
    plans can make covers each output tile and k-tile once (host_check.cu "fragments")."""
    result = subprocess.run([host_check, "fragments"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "agrees with the PTX layouts; every product's tiles covered once" in result.stdout


def _write(dirpath, name, t: torch.Tensor):
    dtype = torch.int64 if not t.is_floating_point() else torch.float32
    (dirpath / f"{name}.bin").write_bytes(t.to(dtype).contiguous().numpy().tobytes())


def _read(dirpath, name, shape):
    import numpy as np
    data = np.fromfile(dirpath / f"out_{name}.bin", dtype=np.float32)
    return torch.from_numpy(data).double().view(shape)


# T, B, I, H, proj, lengths: odd sizes, T = 1, several 8-row mma tiles, packed with and
# without projection; B = 136 is 17 mma row tiles; B = 64, H = 256 streams the
# backward's operand (K = 4H) through the ring in chunks.
SHAPES = [
    (7, 3, 5, 20, 0, None),
    (7, 3, 5, 20, 11, None),
    (1, 1, 3, 20, 0, None),
    (5, 2, 4, 96, 0, None),
    (3, 37, 4, 12, 0, None),
    (7, 3, 5, 20, 0, [7, 4, 1]),
    (6, 4, 3, 9, 5, [6, 6, 3, 2]),
    (4, 18, 3, 8, 3, [4] * 5 + [3] * 6 + [1] * 7),
    (2, 136, 3, 16, 0, None),
    (2, 64, 3, 256, 0, None),
    (2, 16, 3, 768, 0, None),  # FlashRNN's width: W_hh partly in registers both ways
    (3, 5, 3, 700, 0, [3, 2, 2, 1, 1]),  # odd H, packed: a last block of 4 of 8 units
]


def _host_run(host_check, tmp_path, T, B, I, H, proj, lengths, reverse, sms, major, itemsize,
              dtype=torch.float64, backward_plan=None, forward_plan=None):
    """Forward and backward recurrences with the kernels' own logic on the CPU, for the
    plans of a GPU with `sms` SMs and compute capability `major` (9: cluster plans),
    with the product geometry of `itemsize`-byte weights (or `forward_plan` and
    `backward_plan` where given). Returns the host's results and the reference's, both
    float64."""
    bias = lengths is None
    args = layer_args(T, B, I, H, proj=proj, lengths=lengths, bias=bias, dtype=dtype)
    x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = args
    P = proj or H
    y, h_n, c_n, gates, cells, hidden = reference.forward(*args, reverse, "all")
    rows = gates.shape[0]
    g = torch.Generator().manual_seed(1)
    dy = torch.randn(y.shape, generator=g, dtype=dtype)
    dh_n = torch.randn(h_n.shape, generator=g, dtype=dtype)
    dc_n = torch.randn(c_n.shape, generator=g, dtype=dtype)
    needs = [True, True, True, True, True, bias, bias, bool(proj)]
    grads, dgates = reference.backward(dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr,
                                       y, gates, cells, hidden if proj else None, reverse, needs,
                                       [None] * 5, list(x.shape))

    from rnnfast.backends.steps import make_steps
    steps = make_steps(x.shape, batch_sizes, reverse)
    _write(tmp_path, "xg", x.reshape(rows, I) @ w_ih.t())
    for name, t in [("w_hh", w_hh), ("h0", h0), ("c0", c0), ("gates", gates), ("cells", cells),
                    ("dh_n", dh_n), ("dc_n", dc_n), ("dy", dy)]:
        _write(tmp_path, name, t)
    if bias:
        _write(tmp_path, "bias", b_ih + b_hh)
    if proj:
        _write(tmp_path, "w_hr", w_hr)
    if not steps.uniform:
        _write(tmp_path, "offsets", torch.tensor(steps.offsets))
        _write(tmp_path, "sizes", torch.tensor(steps.sizes))

    smem = cuda_plan.H100_SMEM_PER_BLOCK
    for direction in ("forward", "backward"):
        given = forward_plan if direction == "forward" else backward_plan
        plan = given or cuda_plan.make_plan(direction, steps.batch, H, P, bool(proj), itemsize,
                                            sms, smem, major)
        if isinstance(plan, str):
            pytest.skip(f"no plan on {sms} SMs: {plan}")
        meta = [len(steps), steps.batch, H, P, rows, int(reverse), int(not steps.uniform),
                int(bool(proj)), int(bias), plan.units, plan.proj_cols, plan.unit_slices,
                plan.block_rows, plan.cluster, itemsize, 1, plan.reg_k_tiles, plan.reduce_ctas,
                plan.pass_rows]
        (tmp_path / "meta.txt").write_text(" ".join(map(str, meta)))
        result = subprocess.run([host_check, direction, str(tmp_path)], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr

    host = {"y": _read(tmp_path, "y", (rows, P)), "c_n": _read(tmp_path, "c", (steps.batch, H)),
            "gates": _read(tmp_path, "gates", (rows, 4 * H)),
            "cells": _read(tmp_path, "cells", (rows, H)),
            "dgates": _read(tmp_path, "dgates", (rows, 4 * H)),
            "dh0": _read(tmp_path, "dh0", (steps.batch, P)),
            "dc0": _read(tmp_path, "dc0", (steps.batch, H))}
    expected = {"y": y.reshape(rows, P), "c_n": c_n, "gates": gates, "cells": cells,
                "dgates": dgates, "dh0": grads[1], "dc0": grads[2]}
    if proj:  # dW_hr = dy_total^T @ hidden
        host["hidden"] = _read(tmp_path, "hidden", (rows, H))
        expected["hidden"] = hidden
        host["dW_hr"] = _read(tmp_path, "dy_total", (rows, P)).t() @ hidden
        expected["dW_hr"] = grads[7]
    return host, expected


@pytest.mark.parametrize("itemsize", [2, 4], ids=["16bit-plan", "fp32-3xTF32"])
@pytest.mark.parametrize("sms,major", [(3, 8), (132, 9)], ids=["3SMs-grid", "132SMs-cluster"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T,B,I,H,proj,lengths", SHAPES)
def test_host_run_of_the_kernels_logic_matches_reference(host_check, tmp_path, T, B, I, H, proj,
                                                         lengths, reverse, sms, major, itemsize):
    """On 3 SMs units, columns and batch rows split unevenly over blocks (grid plans); on
    132 SMs of an sm_90 most layers run as clusters. fp32 data throughout: itemsize
    picks the plan's product geometry and, for 4, the 3xTF32 split of every product."""
    host, expected = _host_run(host_check, tmp_path, T, B, I, H, proj, lengths, reverse, sms,
                               major, itemsize)
    for name in expected:  # fp32 host run against the float64 reference
        assert_close(host[name], expected[name], atol=2e-5, rtol=1e-4,
                     msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("itemsize", [2, 4], ids=["16bit-plan", "fp32-3xTF32"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T,B,H,lengths,slices,batch_blocks,ctas", [
    (7, 3, 20, None, 2, 1, 2),            # 80 gate columns: 48 and 32; 24 units held, 20 real
    (6, 4, 9, [6, 6, 3, 2], 2, 1, 2),     # 36 columns: 32 and 4; packed
    (5, 37, 24, None, 6, 2, 3),           # 3 CTAs of 32 columns, ragged batch blocks
    (2, 136, 256, [2] * 100 + [1] * 36, 32, 1, 4),  # 136 rows: the dgates staged in chunks
])
def test_host_run_of_a_reduce_split_backward_matches_reference(host_check, tmp_path, T, B, H,
                                                               lengths, slices, batch_blocks,
                                                               ctas, reverse, itemsize):
    """Reduce splits (lstm_backward.cu): each CTA of a cluster multiplies the cluster's
    units over its share of the 4H gate columns (the last share shorter, units past H
    zero), stages only those columns, and the cluster's partial sums are added in rank
    order. The host check replays that, slice by slice, against the reference."""
    plan = cuda_plan._candidate("grid", "backward", B, H, H, False, itemsize, slices,
                                batch_blocks, cuda_plan.H100_SMEM_PER_BLOCK, reduce_ctas=ctas)
    assert plan is not None and (plan.unit_slices, plan.reduce_ctas) == (slices, ctas)
    host, expected = _host_run(host_check, tmp_path, T, B, 3, H, 0, lengths, reverse, 132, 9,
                               itemsize, backward_plan=plan)
    for name in ("dgates", "dh0", "dc0"):
        assert_close(host[name], expected[name], atol=2e-5, rtol=1e-4,
                     msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("itemsize", [2, 4], ids=["16bit-plan", "fp32-3xTF32"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T,B,H,lengths,batch_blocks,pass_rows", [
    (4, 37, 20, None, 1, 16),                      # 40 rows in passes of 16, 16 and 8
    (3, 19, 9, [3] * 11 + [2] * 5 + [1] * 3, 1, 8),  # packed: the last pass's rows end early
    (2, 136, 64, None, 1, 72),                     # 136 rows: one pass does not fit; 72 + 64
])
def test_host_run_of_forward_row_passes_matches_reference(host_check, tmp_path, T, B, H, lengths,
                                                         batch_blocks, pass_rows, reverse,
                                                         itemsize):
    """Row passes (lstm_forward.cu): a grid forward whose batch block's product does not
    fit at once takes its rows in passes, each a product of pass_rows rows (its own
    chunking and warp split). The host check replays the products with the pass's
    geometry against the reference. Where one pass fits, the passes are forced; where it
    does not (B = 136 over 4 blocks of 16 units: 68 output tiles), they are the plan's."""
    args = ("grid", "forward", B, H, H, False, itemsize, 4, batch_blocks,
            cuda_plan.H100_SMEM_PER_BLOCK)
    one = cuda_plan._candidate(*args)
    if one is None:
        plan = cuda_plan._candidate(*args, passes=True)
    else:
        assert cuda_plan._candidate(*args, passes=True) is None  # only where one pass cannot
        plan = dataclasses.replace(one, pass_rows=pass_rows,
                                   smem_bytes=cuda_plan.forward_smem_bytes(
                                       H, H, False, itemsize, one.units, 0, one.block_rows,
                                       False, False, 0, pass_rows))
    assert plan.pass_rows == pass_rows and plan.passes == -(-plan.block_rows // pass_rows) >= 2
    host, expected = _host_run(host_check, tmp_path, T, B, 3, H, 0, lengths, reverse, 132, 9,
                               itemsize, forward_plan=plan)
    for name in ("y", "c_n", "gates", "cells"):
        assert_close(host[name], expected[name], atol=2e-5, rtol=1e-4,
                     msg=lambda m: f"{name}: {m}")


def test_3xtf32_error_over_1024_steps_is_within_the_fp32_rule(host_check, tmp_path):
    """The fp32 kernels multiply through the 3xTF32 split (lstm_common.cuh). Over a long
    sequence its error against float64 must stay within DESIGN.md §6: at most twice the
    error of the reference backend computing in fp32, forward and backward. Prints the
    error's growth over T (pytest -s)."""
    from rnnfast.precision import rule_violations
    T, B, I, H = 1024, 2, 4, 32
    host, expected = _host_run(host_check, tmp_path, T, B, I, H, 0, None, False, 132, 8, 4)
    args = layer_args(T, B, I, H, proj=0, lengths=None, bias=True, dtype=torch.float64)
    args32 = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
              for a in args]
    y, h_n, c_n, gates, cells, _ = reference.forward(*args32, False, "all")
    g = torch.Generator().manual_seed(1)  # the upstream gradients _host_run used
    dy, dh_n, dc_n = (torch.randn(t.shape, generator=g, dtype=torch.float64).float()
                      for t in (y, h_n, c_n))
    grads, dgates = reference.backward(dy, dh_n, dc_n, args32[0], None, args32[2], args32[3],
                                       args32[4], args32[5], None, y, gates, cells, None, False,
                                       [True] * 7 + [False], [None] * 5, list(args32[0].shape))
    fp32 = {"y": y.reshape(T * B, H), "c_n": c_n, "dgates": dgates, "dh0": grads[1],
            "dc0": grads[2]}
    names = list(fp32)
    ours = [(host[n] - expected[n]).abs().max().item() for n in names]
    theirs = [(fp32[n].double() - expected[n]).abs().max().item() for n in names]
    growth_ours = (host["y"] - expected["y"]).abs().view(T, B, H).amax(dim=(1, 2))
    growth_ref = (fp32["y"].double() - expected["y"]).abs().view(T, B, H).amax(dim=(1, 2))
    for t in (0, 31, 255, 1023):
        print(f"t={t:4d}: |y error| 3xTF32 host {growth_ours[t]:.2e}, fp32 reference "
              f"{growth_ref[t]:.2e}")
    assert rule_violations(ours, theirs, torch.float32, names=names) == []

"""The CUDA C++ sources without a GPU (DESIGN.md §6):

- every csrc/*.cu compiles with nvcc for sm_80 and sm_90 (`-c`, so ptxas runs and
  register/shared-memory/resource errors show), warnings as errors, no register spills,
  with the same defines torch's extension build adds;
- the binding compiles against this torch's headers (syntax only: a CPU torch cannot
  link it);
- the kernels' index logic and cell math, which live in __host__ __device__ code
  (csrc/lstm_common.cuh), run on the CPU in csrc/tests/host_check.cu in the kernels'
  loop order and match the reference backend; its shared-memory layout matches the
  Python plan byte for byte.

Tests that need nvcc (or a C++ compiler) skip with the reason.
"""
from __future__ import annotations

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
ARCHS = ("80", "90")
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
    entries = re.findall(r"Compiling entry function '(\w+)' for 'sm_(\d+)'", log)
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
    configs = [(H, P, proj, itemsize, units, cols)
               for H, P in [(20, 20), (20, 11), (96, 96), (768, 768), (1024, 512), (9, 5)]
               for proj in (0, 1) for itemsize in (2, 4)
               for units, cols in [(1, 1), (4, 3), (8, 6), (12, 40), (32, 128)]]
    stdin = "".join(" ".join(map(str, c)) + "\n" for c in configs)
    result = subprocess.run([host_check, "layout"], input=stdin, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    for config, line in zip(configs, result.stdout.splitlines(), strict=True):
        H, P, proj, itemsize, units, cols = config
        fwd, bwd = map(int, line.split())
        assert fwd == cuda_plan.forward_smem_bytes(H, P, bool(proj), itemsize, units, cols), config
        assert bwd == cuda_plan.backward_smem_bytes(H, P, bool(proj), itemsize, units, cols), config


def _write(dirpath, name, t: torch.Tensor):
    dtype = torch.int64 if not t.is_floating_point() else torch.float32
    (dirpath / f"{name}.bin").write_bytes(t.to(dtype).contiguous().numpy().tobytes())


def _read(dirpath, name, shape):
    import numpy as np
    data = np.fromfile(dirpath / f"out_{name}.bin", dtype=np.float32)
    return torch.from_numpy(data).double().view(shape)


# T, B, I, H, proj, lengths: odd sizes, T = 1, several 16-row tiles, packed with and
# without projection.
SHAPES = [
    (7, 3, 5, 20, 0, None),
    (7, 3, 5, 20, 11, None),
    (1, 1, 3, 20, 0, None),
    (5, 2, 4, 96, 0, None),
    (3, 37, 4, 12, 0, None),
    (7, 3, 5, 20, 0, [7, 4, 1]),
    (6, 4, 3, 9, 5, [6, 6, 3, 2]),
    (4, 18, 3, 8, 3, [4] * 5 + [3] * 6 + [1] * 7),
]


@pytest.mark.parametrize("sms", [3, 132], ids=["3SMs", "132SMs"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T,B,I,H,proj,lengths", SHAPES)
def test_host_run_of_the_kernels_logic_matches_reference(host_check, tmp_path, T, B, I, H, proj,
                                                         lengths, reverse, sms):
    """Forward and backward recurrences with the kernels' own step/row/split logic and cell
    math, on a GPU of `sms` SMs (3: units and columns split unevenly over blocks)."""
    bias = lengths is None
    args = layer_args(T, B, I, H, proj=proj, lengths=lengths, bias=bias)
    x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = args
    P = proj or H
    y, h_n, c_n, gates, cells, hidden = reference.forward(*args, reverse, "all")
    rows = gates.shape[0]
    g = torch.Generator().manual_seed(1)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    dh_n = torch.randn(h_n.shape, generator=g, dtype=torch.float64)
    dc_n = torch.randn(c_n.shape, generator=g, dtype=torch.float64)
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
    for kind, make in (("forward", cuda_plan.forward_plan), ("backward", cuda_plan.backward_plan)):
        plan = make(H, P, bool(proj), 4, sms, smem)
        assert isinstance(plan, cuda_plan.Plan), plan
        meta = [len(steps), steps.batch, H, P, rows, int(reverse), int(not steps.uniform),
                int(bool(proj)), int(bias), plan.blocks, plan.units, plan.proj_cols, 1]
        (tmp_path / "meta.txt").write_text(" ".join(map(str, meta)))
        result = subprocess.run([host_check, kind, str(tmp_path)], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr

    tol = dict(atol=2e-5, rtol=1e-4)  # fp32 host run against the float64 reference
    assert_close(_read(tmp_path, "y", (rows, P)), y.reshape(rows, P), **tol)
    assert_close(_read(tmp_path, "c", (steps.batch, H)), c_n, **tol)
    assert_close(_read(tmp_path, "gates", (rows, 4 * H)), gates, **tol)
    assert_close(_read(tmp_path, "cells", (rows, H)), cells, **tol)
    if proj:
        assert_close(_read(tmp_path, "hidden", (rows, H)), hidden, **tol)
    assert_close(_read(tmp_path, "dgates", (rows, 4 * H)), dgates, **tol)
    assert_close(_read(tmp_path, "dh0", (steps.batch, P)), grads[1], **tol)
    assert_close(_read(tmp_path, "dc0", (steps.batch, H)), grads[2], **tol)
    if proj:  # dW_hr = dy_total^T @ hidden
        dy_total = _read(tmp_path, "dy_total", (rows, P))
        assert_close(dy_total.t() @ hidden, grads[7], **tol)

"""The CUDA C++ sources without a GPU (DESIGN.md §6):

- every csrc/*.cu compiles with nvcc for sm_80 and sm_90a (`-c`, so ptxas runs and
  register/shared-memory/resource errors show), warnings as errors, no register spills,
  with the same defines torch's extension build adds, and their objects link into one
  library as the extension's do; setup.py finds the toolkit behind an nvcc wrapper;
- the binding compiles against this torch's headers (syntax only: a CPU torch cannot
  link it);
- csrc/tests/host_check.cu checks the kernels' __host__ __device__ code
  (csrc/lstm_common.cuh) against what is written independently: its shared-memory
  layout matches the Python plan byte for byte, the mma fragment addressing agrees with
  the PTX ISA's layouts (emulated ldmatrix / mma), the cluster exchange sends what its
  mbarriers expect. The kernels themselves run on the CPU in tests/test_cuda_emulated.py.

Tests that need nvcc (or a C++ compiler) skip with the reason.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor

import pytest

from rnnfast.backends.cuda import plan as cuda_plan

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
def test_setup_finds_the_toolkit_behind_an_nvcc_wrapper(tmp_path):
    """setup.py hands torch's extension build the toolkit that nvcc runs from. With no
    CUDA_HOME torch takes the folder above the nvcc on PATH, and where that nvcc is a
    wrapper script outside the toolkit (/usr/local/bin/nvcc on these machines) it looked
    for cuda_runtime_api.h in /usr/local/include and the build failed."""
    spec = importlib.util.spec_from_file_location("rnnfast_setup", os.path.join(ROOT, "setup.py"))
    setup_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup_py)  # defines its helpers; setup() runs only as a script
    wrapper = tmp_path / "bin" / "nvcc"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec "{NVCC}" "$@"\n')
    wrapper.chmod(0o755)
    root = setup_py._toolkit_root(str(wrapper))
    assert root is not None and root == setup_py._toolkit_root(NVCC)
    assert os.path.exists(os.path.join(root, "include", "cuda_runtime_api.h"))
    assert os.access(os.path.join(root, "bin", "nvcc"), os.X_OK)
    assert setup_py._toolkit_root(shutil.which("true") or "/bin/true") is None  # not an nvcc


@pytest.fixture(scope="module")
def kernel_objects(tmp_path_factory):
    """{source: (object file, nvcc's return code, its log with ptxas -v)} of every
    csrc/*.cu for sm_80 and sm_90a, as position-independent code (torch's build adds
    -fPIC too), compiled two at a time."""
    out = tmp_path_factory.mktemp("kernels")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]

    def compile_one(source):
        obj = str(out / (os.path.basename(source) + ".o"))
        cmd = [NVCC, "-std=c++17", "-O3", "-Xcompiler", "-fPIC", "-c", source, "-o", obj, *gencode,
               *TORCH_NVCC_DEFINES, "--Werror", "all-warnings", "-Xptxas", "-v"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        return obj, result.returncode, result.stdout + result.stderr

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(KERNELS, pool.map(compile_one, KERNELS)))


@needs_nvcc
@pytest.mark.parametrize("source", KERNELS, ids=os.path.basename)
def test_kernel_compiles_for_sm80_and_sm90(source, kernel_objects):
    _, returncode, log = kernel_objects[source]
    assert returncode == 0, log
    # ptxas -v reports each kernel per architecture: all of them, none spilling.
    entries = re.findall(r"Compiling entry function '(\w+)' for 'sm_(\w+)'", log)
    assert {arch for _, arch in entries} == set(ARCHS), log
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert spills and all(s == ("0", "0") for s in spills), log


@needs_nvcc
def test_kernel_objects_link_into_one_library(kernel_objects, tmp_path):
    """The extension links every kernel object into one library (setup.py): a function
    defined, not inline, in a header they share is defined in each of them and fails
    that link (grid_barrier_wait did, which compiling each source alone never showed)."""
    objects = [obj for obj, returncode, _ in kernel_objects.values() if returncode == 0]
    if len(objects) < len(KERNELS):
        pytest.skip("a kernel did not compile (test_kernel_compiles_for_sm80_and_sm90 says why)")
    result = subprocess.run([NVCC, "-shared", "-o", str(tmp_path / "kernels.so"), *objects],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


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

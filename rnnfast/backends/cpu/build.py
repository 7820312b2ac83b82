"""Compiles the CPU extension (csrc/cpu/) on first use and caches it.

Why at first use and not in setup.py: the README installs with pip's build isolation
and torch is not a build requirement (a CPU install stays light), so at build time no
torch headers are there to compile against. torch.utils.cpp_extension.load builds
with ninja into torch's extensions cache (TORCH_EXTENSIONS_DIR, by default
~/.cache/torch_extensions), once per torch version, source and flag set; every later
process only loads the cached library. The build holds a file lock, so processes that
start together build it once.

Compiled for the instruction set torch's own kernels use on this CPU (what
torch.backends.cpu.get_cpu_capability() says; ATEN_CPU_CAPABILITY=avx2 lowers both):
AVX-512 (at::vec with 512-bit vectors), AVX2/FMA (256-bit), portable code elsewhere,
with the SLEEF exp/tanh that libtorch exports for each. Where the CPU also has
AVX512_BF16 the AVX-512 build adds the bf16 kernels (vdpbf16ps products): built on and
for the machine that runs it, like -march=native, so no other CPU ever loads it.
"""
from __future__ import annotations

import functools
import os
import shutil
import sys
import time
from types import ModuleType
from typing import Optional

import torch

SOURCES = ("lstm_cpu.cpp",)
HEADERS = ("lstm_cell_cpu.h",)


def source_dir() -> Optional[str]:
    """csrc/cpu of this checkout (editable installs), else None: a wheel ships no csrc."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.normpath(os.path.join(here, "..", "..", "..", "csrc", "cpu"))
    return path if all(os.path.exists(os.path.join(path, f)) for f in SOURCES + HEADERS) else None


@functools.cache
def missing_tool() -> Optional[str]:
    """Why nothing can be compiled here (no compiler, no ninja, no sources), else None.
    Asked once per process: looking for ninja runs it."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler!r} not found on PATH; set CXX or install g++)"
    from torch.utils.cpp_extension import is_ninja_available
    if not is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    if source_dir() is None:
        return "the C++ sources (csrc/cpu/) are not in this install; use an editable install"
    return None


# Whether this CPU's build has the bf16 kernels: AVX-512 torch kernels (so the build is
# the AVX-512 one) on a CPU with AVX512_BF16. Found once, at import: every CPU layer call
# asks, and torch.compile reads module constants as constants (it cannot trace the CPU
# queries). torch.compiler.assume_constant_result would do that too, but importing
# torch._dynamo for it made `import rnnfast` take 1.5 s instead of 0.1 s.
_CPU_CAPABILITY = torch.backends.cpu.get_cpu_capability()  # "AVX2", "AVX512", "DEFAULT", ...
_AVX512_BF16 = torch.cpu._is_avx512_bf16_supported()
_BF16_KERNELS = _CPU_CAPABILITY == "AVX512" and _AVX512_BF16


def has_bf16_kernels() -> bool:
    """Whether this CPU's build has the bf16 kernels (_BF16_KERNELS)."""
    return _BF16_KERNELS


def compile_flags() -> tuple[str, list[str]]:
    """A name unique to the instruction set and the compile flags for it (also what
    bench/cpu_floor.py compiles its probes with)."""
    # -fopenmp: at::parallel_for is a header template whose threads are an OpenMP
    # pragma; compiled without it, every split over threads runs on one thread. Linked
    # as libgomp.so.1, the runtime libtorch already loaded (one pool, one thread count).
    flags = ["-O3", "-std=c++17", "-fopenmp"]
    capability = _CPU_CAPABILITY
    if capability == "AVX512":
        # 512-bit at::vec, with the AVX-512 SLEEF exp/tanh that libtorch exports.
        flags += ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma",
                  "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
        if has_bf16_kernels():
            return "rnnfast_cpu_avx512_bf16", flags + ["-mavx512bf16", "-DRNNFAST_BF16_DOT"]
        return "rnnfast_cpu_avx512", flags
    if capability == "AVX2":
        flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
        return "rnnfast_cpu_avx2", flags
    return "rnnfast_cpu_default", flags


def build() -> ModuleType:
    """The compiled extension: loaded from the cache, or built first (about a minute)."""
    name, flags = compile_flags()
    directory = source_dir()
    sources = [os.path.join(directory, f) for f in SOURCES]
    from torch.utils.cpp_extension import _get_build_directory, load
    cached = os.path.exists(os.path.join(_get_build_directory(name, verbose=False), f"{name}.so"))
    if not cached:
        print(f"rnnfast: compiling the CPU kernels ({name}, one time, about a minute) ...",
              file=sys.stderr, flush=True)
    start = time.monotonic()
    module = load(name=name, sources=sources, extra_cflags=flags, extra_ldflags=["-fopenmp"],
                  extra_include_paths=[directory], verbose=False)
    if not cached:
        print(f"rnnfast: CPU kernels built in {time.monotonic() - start:.0f} s (cached for "
              "later runs)", file=sys.stderr, flush=True)
    return module

"""Compiles the CPU extension (csrc/cpu/) on first use and caches it.

Why at first use and not in setup.py: the README installs with pip's build isolation
and torch is not a build requirement (a CPU install stays light), so at build time no
torch headers are there to compile against. torch.utils.cpp_extension.load builds
with ninja into torch's extensions cache (TORCH_EXTENSIONS_DIR, by default
~/.cache/torch_extensions), once per torch version, source and flag set; every later
process only loads the cached library. The build holds a file lock, so processes that
start together build it once.

Compiled for the CPU it runs on: with AVX2/FMA where torch's own kernels use them
(at::vec then uses 256-bit vectors and torch's exported SLEEF exp/tanh), portable
code elsewhere.
"""
from __future__ import annotations

import ctypes
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


def _torch_exports_blas() -> bool:
    """Whether libtorch_cpu exports the Fortran BLAS GEMMs (MKL builds do): then each
    step's product calls sgemm_/dgemm_ directly, no dispatcher in between."""
    library = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        handle = ctypes.CDLL(library)
    except OSError:
        return False
    return all(hasattr(handle, name) for name in ("sgemm_", "dgemm_"))


def _flags() -> tuple[str, list[str]]:
    """A name unique to the instruction set and the compile flags for it."""
    flags = ["-O3", "-std=c++17"]
    if _torch_exports_blas():
        flags.append("-DRNNFAST_DIRECT_BLAS")
    capability = torch.backends.cpu.get_cpu_capability()  # "AVX2", "AVX512", "DEFAULT", ...
    if capability in ("AVX2", "AVX512"):
        # AVX2 code only: it runs on every AVX-512 CPU too, and at::vec's 512-bit path
        # would need torch's AVX-512 SLEEF build.
        flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
        return "rnnfast_cpu_avx2", flags
    return "rnnfast_cpu_default", flags


def build() -> ModuleType:
    """The compiled extension: loaded from the cache, or built first (about a minute)."""
    name, flags = _flags()
    directory = source_dir()
    sources = [os.path.join(directory, f) for f in SOURCES]
    from torch.utils.cpp_extension import _get_build_directory, load
    cached = os.path.exists(os.path.join(_get_build_directory(name, verbose=False), f"{name}.so"))
    if not cached:
        print(f"rnnfast: compiling the CPU kernels ({name}, one time, about a minute) ...",
              file=sys.stderr, flush=True)
    start = time.monotonic()
    module = load(name=name, sources=sources, extra_cflags=flags,
                  extra_include_paths=[directory], verbose=False)
    if not cached:
        print(f"rnnfast: CPU kernels built in {time.monotonic() - start:.0f} s (cached for "
              "later runs)", file=sys.stderr, flush=True)
    return module

"""Build script. The package itself is pure Python; the CUDA C++ backend (extension
rnnfast._C, built from csrc/ with torch's extension machinery: pybind11 and ninja) is
added only where a CUDA toolkit and a CUDA build of torch are importable at build time.
A CPU-only install never attempts it and needs no torch to build.

The C++ CPU kernels (csrc/cpu/, backend "cpu") are not built here: pip's build isolation
(the README's install) hides torch's headers from this script, so
rnnfast/backends/cpu/build.py compiles them with torch.utils.cpp_extension.load the
first time a CPU layer runs (about 80 s once on a 2-core EPYC; cached in
TORCH_EXTENSIONS_DIR, ~/.cache/torch_extensions by default). That needs the sources,
so an editable install (-e); elsewhere the reference backend runs, as it says once.

torch is not in pyproject's build requirements (a CPU install must stay light), so the
CUDA build needs the installed torch visible to the build:

    pip install --no-build-isolation -e .

Environment flags:
    RNNFAST_SKIP_CUDA_BUILD=1    never build the extension
    RNNFAST_FORCE_CUDA_BUILD=1   build it or fail loudly (no silent pure-Python install)
    RNNFAST_CUDA_ARCHS="80;90"   compute capabilities to build for (default "80;90");
                                 the newest one also gets PTX, for GPUs newer than all
"""
import os
import shutil
import subprocess
import sys

from setuptools import setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _skip(reason: str, force: bool):
    if force:
        sys.exit(f"RNNFAST_FORCE_CUDA_BUILD=1 but the CUDA extension cannot be built: {reason}")
    print(f"rnnfast: building without the CUDA extension ({reason})", file=sys.stderr)
    return {}


def _gencode_flags(archs: str) -> list:
    """ "80;90" -> -gencode for sm_80 and sm_90a, plus compute_90 PTX for newer GPUs.
    Hopper's machine code is built as sm_90a: the multicast bulk copies of the grid
    kernels are optimized for it (PTX ISA) and run on every compute capability 9.0 GPU;
    the PTX stays the portable compute_90."""
    codes = [a.strip().replace(".", "") for a in archs.replace(",", ";").split(";") if a.strip()]
    if not codes:
        sys.exit(f"RNNFAST_CUDA_ARCHS={archs!r} names no architecture")
    flags = []
    for code in codes:
        machine = "90a" if code == "90" else code
        flags.append(f"-gencode=arch=compute_{machine},code=sm_{machine}")
    flags.append(f"-gencode=arch=compute_{codes[-1]},code=compute_{codes[-1]}")
    return flags


def _toolkit_root(nvcc: str):
    """The CUDA toolkit that `nvcc` runs from, or None. torch's extension build takes the
    toolkit as CUDA_HOME, or else as the folder above the nvcc on PATH; when that nvcc is
    a wrapper script or a link outside the toolkit (say /usr/local/bin/nvcc running
    /usr/local/cuda-13.0/bin/nvcc) that folder holds no CUDA headers and the build
    fails on cuda_runtime_api.h. nvcc names its own toolkit in a dry run (TOP=...)."""
    try:
        dry = subprocess.run([nvcc, "--dryrun", "-E", "-x", "cu", os.devnull], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (dry.stdout + dry.stderr).splitlines():
        if line.startswith("#$ TOP="):
            root = os.path.realpath(line[len("#$ TOP="):].strip())
            if os.path.exists(os.path.join(root, "include", "cuda_runtime_api.h")):
                return root
    return None


def _cuda_extension_kwargs() -> dict:
    force = _flag("RNNFAST_FORCE_CUDA_BUILD")
    if _flag("RNNFAST_SKIP_CUDA_BUILD"):
        return _skip("RNNFAST_SKIP_CUDA_BUILD=1", force=False)
    # Cheap checks first: no toolkit, no torch import.
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = shutil.which("nvcc")
    if nvcc is None and not (cuda_home and os.path.exists(os.path.join(cuda_home, "bin", "nvcc"))):
        return _skip("no CUDA toolkit: nvcc not found", force)
    if cuda_home is None:  # before torch's extension module reads it, at import
        cuda_home = _toolkit_root(nvcc)
        if cuda_home is not None:
            os.environ["CUDA_HOME"] = cuda_home
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    except ImportError as error:
        return _skip(f"torch is not importable at build time ({error}); "
                     "use pip install --no-build-isolation", force)
    if torch.version.cuda is None:
        return _skip(f"torch {torch.__version__} is not a CUDA build", force)

    here = os.path.dirname(os.path.abspath(__file__))
    csrc = os.path.join("csrc")
    sources = [os.path.join(csrc, name) for name in
               ("binding.cpp", "lstm_forward.cu", "lstm_backward.cu", "lstm_probe.cu")]
    nvcc = ["-O3", "-std=c++17", "-lineinfo",
            *_gencode_flags(os.environ.get("RNNFAST_CUDA_ARCHS", "80;90"))]
    extension = CUDAExtension(
        name="rnnfast._C",
        sources=sources,
        include_dirs=[os.path.join(here, csrc)],
        extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": nvcc},
    )
    return {"ext_modules": [extension], "cmdclass": {"build_ext": BuildExtension}}


if __name__ == "__main__":  # as pip's build backend runs it; tests import the helpers
    setup(**_cuda_extension_kwargs())

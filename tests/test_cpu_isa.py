"""The CPU backend's builds for lower instruction sets than this CPU's, on this CPU.

build.py compiles csrc/cpu for the instruction set torch's own kernels use: AVX-512,
AVX2 or portable code. They are different programs (register tiles 16 or 8 vectors
wide, a 16x16 or an 8x8 register transpose, no bf16 kernels below AVX-512), and a
machine runs only its own. ATEN_CPU_CAPABILITY lowers torch and build.py together, so
the whole of tests/test_cpu_backend.py runs here again as an AVX2-only and as a
portable CPU would run it. Each lowered build compiles once (about 40 s on 2 cores)."""
import os
import subprocess
import sys

import pytest
import torch

from rnnfast import backends

# From the highest; a build is tested here only below what this CPU already runs.
_ORDER = ("AVX512", "AVX2", "DEFAULT")
_HERE = torch.backends.cpu.get_cpu_capability()
_CPU_BACKEND_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_cpu_backend.py")


@pytest.mark.skipif(backends.available_backends()["cpu"] is not None,
                    reason=f"cpu backend unavailable: {backends.available_backends()['cpu']}")
@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_cpu_backend_tests_pass_on_a_lower_instruction_sets_build(capability):
    if _HERE not in _ORDER or _ORDER.index(capability.upper()) <= _ORDER.index(_HERE):
        pytest.skip(f"this CPU's own build is {_HERE}; the main run already tests it")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    probe = ("import torch; from rnnfast.backends.cpu import build; "
             "print(torch.backends.cpu.get_cpu_capability(), build.compile_flags()[0])")
    lowered = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                             text=True, timeout=120)
    assert lowered.stdout.split() == [capability.upper(), f"rnnfast_cpu_{capability}"], (
        f"ATEN_CPU_CAPABILITY={capability} did not select that build: {lowered.stdout!r} "
        f"{lowered.stderr[-2000:]}")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          _CPU_BACKEND_FILE], env=env, capture_output=True, text=True,
                         timeout=900)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    assert run.returncode == 0, (f"tests/test_cpu_backend.py on the {capability} build: "
                                 f"{summary}\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}")
    assert " passed" in summary and " failed" not in summary, summary

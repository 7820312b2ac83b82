"""Ahead-of-time compilation of the launch plans for a GPU architecture, on any machine:
what the planner would launch for a layer, and the shared memory, registers and spills
its compiled kernel needs. The tests' CI gate, `rnnfast bench --explain` and users
share `compile_plan`; no GPU is needed (Triton compiles for a named target, and ptxas
from the Triton wheel reports registers and spills).

The kernels are compiled with the argument specialization Triton's launcher would give
them (16-byte aligned pointers, integers equal to 1 folded, multiples of 16 marked), so
the numbers are those of the kernel that would run.

Under TRITON_INTERPRET=1 the kernel modules hold interpreter functions, which cannot be
compiled; there compile_plans runs itself in one child process with the interpreter off.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Optional

import torch

from . import interpreting
from .backward import _lstm_backward_kernel
from .forward import _lstm_forward_kernel
from .launch import MAX_REGISTERS, backward_constexprs, forward_constexprs, launch_options
from .plan import Plan, gpu_plan

# Shared memory one program may use (the opt-in maximum per block), multiprocessors of
# the part the planner assumes, and the register ceiling of a thread.
SHARED_LIMIT = {80: 166_912, 86: 101_376, 89: 101_376, 90: 232_448}
MULTIPROCESSORS = {80: 108, 86: 84, 89: 128, 90: 132}  # A100, RTX 3090, L40, H100/H200 SXM
DIRECTIONS = ("forward", "backward")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
           "float64": torch.float64}


@dataclass(frozen=True)
class Resources:
    shared: int        # bytes of shared memory per program (Triton's dynamic + ptxas static)
    registers: int     # per thread
    spill_bytes: int   # spill stores + spill loads per thread, as ptxas counts them
    mma: int = 0       # tensor-core instructions (mma / wgmma) in the PTX
    held_buffers: int = 0  # shared-memory buffers filled before the time loop: held W_hh
    acquires: int = 0  # acquire-ordered loads or atomics in the PTX: the barrier's acquire
    word_stores: int = 0  # 8-byte relaxed gpu-scope atomic exchanges: tagged plans' stores
    word_loads: int = 0   # 8-byte volatile loads: tagged plans' polls

    def problems(self, arch: int) -> list[str]:
        """What keeps this kernel from running well on `arch`: [] when nothing does."""
        found = []
        if self.shared > SHARED_LIMIT[arch]:
            found.append(f"shared memory {self.shared} B > {SHARED_LIMIT[arch]} B")
        if self.registers > MAX_REGISTERS:
            found.append(f"{self.registers} registers > {MAX_REGISTERS}")
        if self.spill_bytes:
            found.append(f"{self.spill_bytes} B of register spills")
        return found


@dataclass(frozen=True)
class CompiledPlan:
    plan: Plan
    resources: Resources
    arch: int
    direction: str


@dataclass(frozen=True)
class KernelCase:
    """Everything that decides which kernel is compiled (plan and flags) and how Triton
    specializes its integer arguments (sizes)."""
    direction: str
    plan: Plan
    dtype: str          # torch dtype name without "torch."
    arch: int
    packed: bool
    has_proj: bool
    seq_len: int
    batch: int
    hidden: int
    out_size: int


def plan_case(batch: int, hidden: int, proj_size: int, seq_len: int, dtype: torch.dtype,
              arch: int, packed: bool = False, direction: str = "forward",
              plan: Optional[Plan] = None) -> KernelCase:
    """The kernel the planner would launch for this layer on `arch` (or for `plan`)."""
    if arch not in SHARED_LIMIT:
        raise ValueError(f"arch must be one of {sorted(SHARED_LIMIT)}, got {arch}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    if dtype not in _DTYPES.values():
        raise TypeError(f"dtype must be one of {list(_DTYPES.values())}, got {dtype}")
    if min(batch, hidden, seq_len) < 1 or proj_size < 0 or proj_size >= hidden:
        raise ValueError(f"need batch, hidden, seq_len >= 1 and 0 <= proj_size < hidden, got "
                         f"batch={batch}, hidden={hidden}, proj_size={proj_size}, seq_len={seq_len}")
    out_size = proj_size or hidden
    plan = plan or gpu_plan(batch, hidden, out_size, seq_len, dtype.itemsize,
                            MULTIPROCESSORS[arch], direction)
    return KernelCase(direction, plan, str(dtype).removeprefix("torch."), arch, packed,
                      proj_size > 0, seq_len, batch, hidden, out_size)


def compile_plan(batch: int, hidden: int, proj_size: int, seq_len: int, dtype: torch.dtype,
                 arch: int, packed: bool = False, direction: str = "forward",
                 plan: Optional[Plan] = None) -> CompiledPlan:
    """The plan the planner picks for one layer (batch B, hidden H, proj_size P or 0,
    seq_len T, input dtype) on a GPU of compute capability `arch` (80, 86, 89 or 90),
    and the resources of its compiled forward or backward kernel. `plan` overrides the
    planner (to inspect another plan)."""
    case = plan_case(batch, hidden, proj_size, seq_len, dtype, arch, packed, direction, plan)
    return compile_cases([case])[0]


def compile_cases(cases: list[KernelCase]) -> list[CompiledPlan]:
    """compile_plan for many kernels at once; each distinct kernel compiles once."""
    kernels = list(dict.fromkeys(_kernel_of(case) for case in cases))
    if interpreting():
        found = dict(zip(kernels, _compile_in_child(kernels)))
    else:
        found = {kernel: _resources(kernel) for kernel in kernels}
    return [CompiledPlan(case.plan, found[_kernel_of(case)], case.arch, case.direction)
            for case in cases]


def _kernel_of(case: KernelCase) -> KernelCase:
    """The case with only what reaches the compiled kernel: the grid is a launch
    parameter, and of each size only how Triton's launcher specializes it (folded when
    1, marked when a multiple of 16)."""
    def specialized(size: int) -> int:  # a stand-in with the same specialization
        _, folded, divisible = _specialized_size(size)
        return 1 if folded is not None else 16 if divisible else 17

    plan = dataclasses.replace(case.plan, batch_blocks=1, programs_per_batch_block=1)
    return dataclasses.replace(case, plan=plan, seq_len=specialized(case.seq_len),
                               batch=specialized(case.batch), hidden=specialized(case.hidden),
                               out_size=specialized(case.out_size))


def _compile_in_child(kernels: list[KernelCase]) -> list[Resources]:
    request = json.dumps([dataclasses.asdict(kernel) for kernel in kernels])
    env = dict(os.environ, TRITON_INTERPRET="0")
    done = subprocess.run([sys.executable, "-m", __name__], input=request, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"compiling the plans in a child process failed:\n{done.stderr}")
    return [Resources(**found) for found in json.loads(done.stdout)]


def _specialized_size(value: int) -> tuple[str, Optional[int], bool]:
    """Triton's launcher folds an integer argument equal to 1 into the kernel and marks
    multiples of 16: (signature type, folded value, divisible by 16)."""
    if value == 1:
        return "constexpr", 1, False
    return "i32", None, value % 16 == 0


@functools.lru_cache(maxsize=None)
def _resources(case: KernelCase) -> Resources:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    dtype = _DTYPES[case.dtype]
    ptr = "*" + {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
                 torch.float64: "fp64"}[dtype]
    acc = "*fp64" if dtype == torch.float64 else "*fp32"
    sizes = dict(T=case.seq_len, B=case.batch, H=case.hidden, P=case.out_size)
    if case.direction == "forward":
        kernel = _lstm_forward_kernel
        constexprs = forward_constexprs(case.plan, dtype, reverse=False, packed=case.packed,
                                        has_bias=True, has_proj=case.has_proj, save="all")
        pointers = dict(xg_ptr=ptr, bias_ptr=acc, w_hh_ptr=ptr, w_hr_ptr=ptr, h0_ptr=ptr,
                        c_ptr=acc, y_ptr=ptr, gates_ptr=acc, cells_ptr=acc, hidden_ptr=ptr)
    else:
        kernel = _lstm_backward_kernel
        constexprs = backward_constexprs(case.plan, dtype, reverse=False, packed=case.packed,
                                         has_dy=True, has_proj=case.has_proj,
                                         need_dy_total=case.has_proj)
        pointers = dict(dy_ptr=ptr, gates_ptr=acc, cells_ptr=acc, c0_ptr=acc, w_hh_ptr=ptr,
                        w_hr_ptr=ptr, dh_ptr=acc, dc_ptr=acc, dh0_ptr=acc, dc0_ptr=acc,
                        dgates_ptr=acc, chain_ptr=ptr, dy_total_ptr=acc)
    pointers.update(offsets_ptr="*i64", sizes_ptr="*i32", barrier_ptr="*i32", words_ptr="*i64")
    signature, attrs = {}, {}
    for index, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
            attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name], folded, divisible = _specialized_size(sizes[name])
            if folded is not None:
                constexprs = {**constexprs, name: folded}
            attrs[(index,)] = [["tt.divisibility", 16]] if divisible else []
    options = launch_options(case.plan)
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs),
                              target=GPUTarget("cuda", case.arch, 32), options=options)
    ptx = compiled.asm["ptx"]
    registers, spills, static_shared = _ptxas_report(ptx, case.arch)
    mma = len(re.findall(r"^\s*(?:mma|wgmma)\.", ptx, re.MULTILINE))
    # The held W_hh chunks are written to shared memory once, before the loop over time
    # (the kernel's first scf.for), and read from there at every step.
    ttgir = compiled.asm["ttgir"]
    held_buffers = ttgir[:ttgir.index("scf.for")].count("ttg.local_alloc")
    acquires = len(re.findall(r"^\s*(?:@%p\d+\s+)?(?:ld|atom)\.\S*acquire", ptx, re.MULTILINE))
    word_stores = len(re.findall(r"\batom\.global\.gpu\.relaxed\.exch\.b64\b", ptx))
    word_loads = len(re.findall(r"\bld\.volatile\.global\.(?:v[24]\.)?b64\b", ptx))
    return Resources(compiled.metadata.shared + static_shared, registers, spills, mma,
                     held_buffers, acquires, word_stores, word_loads)


def _ptxas_report(ptx: str, arch: int) -> tuple[int, int, int]:
    """(registers, spill bytes, static shared bytes) from `ptxas -v` (the PTX targets
    sm_90a on Hopper: Triton uses its wgmma instructions there)."""
    from triton.backends.nvidia.compiler import get_ptxas

    target = re.search(r"^\.target\s+(\w+)", ptx, re.MULTILINE).group(1)
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "kernel.ptx")
        with open(source, "w") as f:
            f.write(ptx)
        # The flags Triton's own ptxas call adds that change register allocation.
        done = subprocess.run([get_ptxas(arch).path, "-v", "--regAllocOptLevel=2",
                               f"--gpu-name={target}", source,
                               "-o", os.path.join(folder, "kernel.cubin")],
                              capture_output=True, text=True, check=True)
    report = done.stderr
    registers = int(re.search(r"Used (\d+) registers", report).group(1))
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", report))
    smem = re.search(r"(\d+) bytes smem", report)
    return registers, spills, int(smem.group(1)) if smem else 0


def _serve_child() -> None:
    """The child side of _compile_in_child: cases as JSON on stdin, resources on stdout."""
    cases = []
    for raw in json.load(sys.stdin):
        raw["plan"] = Plan(**raw["plan"])
        cases.append(KernelCase(**raw))
    json.dump([dataclasses.asdict(_resources(case)) for case in cases], sys.stdout)


if __name__ == "__main__":
    _serve_child()

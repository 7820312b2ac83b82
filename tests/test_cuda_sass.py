"""The CUDA kernels' instruction mix, checked in their SASS without a GPU.

The latency design of DESIGN.md §5 rests on what the compiler emits, which a
numerical test cannot see: a kernel that computes the right answer with scalar
loads, fp32 FMA products or spilled registers passes every parity test and is
several times slower. So each of csrc/lstm_forward.cu and csrc/lstm_backward.cu is
compiled to a cubin for sm_80 and sm_90a (the same defines torch's build adds),
disassembled, and every lstm_forward_kernel / lstm_backward_kernel instance (float,
__half, __nv_bfloat16, any cluster or register variant) must have:

- no local memory: no LDL/STL instruction, and ptxas -v reports 0 bytes stack frame
  and 0 bytes spill stores/loads for every function it compiled;
- tensor cores in both directions: at least one HMMA (HMMA.16816.F32[.BF16] for
  16-bit inputs, HMMA.1684.F32.TF32 for the 3xTF32 fp32 product) or, on sm_90a,
  HGMMA;
- 16-byte or asynchronous global loads in the per-step path: at least one LDGSTS
  (cp.async), LDG.E[...].128, UTMALDG or UBLKCP (TMA / cp.async.bulk). A cluster
  kernel's operand never comes from global memory: it must instead copy into its
  peers' shared memory with st.async (STAS[.64]) and wait on its mbarrier for theirs
  (SYNCS.PHASECHK.TRANS64), and meet at the hardware cluster barrier at most twice
  (UCGABAR_ARV: the start and the end; a barrier a step would be a release at cluster
  scope, MEMBAR.ALL.GPU, waiting for the step's global stores). On sm_90a a grid kernel
  must also have the multicast staging of grid plans in clusters: a bulk copy to every
  CTA of its cluster (UBLKCP.S.G.MULTICAST) and the mbarrier wait for its bytes
  (SYNCS.PHASECHK.TRANS64); except the reduce-split backward (sm_90a only), which must
  instead meet its cluster at the hardware barrier every step (UCGABAR_ARV beyond the
  start and the end) and read its peers' partial sums 16 bytes at a time (LD.E.128
  through the cluster's shared-memory window);
- no strong (GPU- or system-scope) loads outside the grid barrier's poll loop:
  LD[G].E[...].STRONG.GPU/.SYS only in a function whose name contains
  "barrier_wait" (a __noinline__ device function; see sass_functions for how it is
  told apart from the kernel body). Note that __ldcg (ld.global.cg) is such a load:
  ptxas emits it as LDG.E[.U16|.128].STRONG.GPU on sm_80 and sm_90a, so a kernel
  must not read its per-step operands with __ldcg.

Every kernel that breaks a rule is listed in one assertion message per (source,
arch). Skips with the reason when nvcc or nvdisasm is missing. nvcc runs twice per
source in the suite (here to a cubin, in test_cuda_sources.py to an object); the
four compiles here run two at a time.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from test_cuda_sources import CSRC, NVCC, TORCH_NVCC_DEFINES

SOURCES = ("lstm_forward.cu", "lstm_backward.cu")
ARCHS = ("sm_80", "sm_90a")
# The grid kernels, on every arch; the backward's register grid kernel too.
KIND = {"lstm_forward.cu": ("lstm_forward_kernel",),
        "lstm_backward.cu": ("lstm_backward_kernel", "lstm_backward_reg_kernel")}
# sm_90 only: the cluster kernels' sm_80 images are empty stubs the host never launches.
SM90_KIND = {"lstm_forward.cu": ("lstm_forward_cluster_kernel", "lstm_forward_reg_kernel"),
             "lstm_backward.cu": ("lstm_backward_cluster_kernel",
                                  "lstm_backward_cluster_reg_kernel",
                                  "lstm_backward_reduce_kernel")}
# A grid kernel in clusters whose CTAs add up each other's partial products (DSMEM).
REDUCE_KINDS = {"lstm_backward_reduce_kernel"}
CLUSTER_KINDS = {kind for kinds in SM90_KIND.values() for kind in kinds} - REDUCE_KINDS
# The register kernels (W_hh partly in registers) exist for 16-bit weights only.
DTYPES = {kind: {"__half", "__nv_bfloat16"} for kind in (
    "lstm_forward_reg_kernel", "lstm_backward_reg_kernel", "lstm_backward_cluster_reg_kernel")}
# (else all three)
# The latency probes (test_probes_time_the_instructions_they_name).
PROBES = "lstm_probe.cu"


def _tool_dirs():
    """Where a CUDA binary utility may be: PATH first, then the CUDA home's bin (also
    the one nvcc lives in), then the copy the Triton wheel ships."""
    dirs = []
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            dirs.append(os.path.join(home, "bin"))
    if NVCC:
        dirs.append(os.path.dirname(os.path.realpath(NVCC)))
    spec = importlib.util.find_spec("triton")  # locates the wheel without importing it
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            dirs.append(os.path.join(loc, "backends", "nvidia", "bin"))
    return dirs


def _find_tool(name):
    found = shutil.which(name)
    if found:
        return found
    for d in _tool_dirs():
        path = os.path.join(d, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


NVDISASM = _find_tool("nvdisasm")
CXXFILT = _find_tool("cu++filt") or shutil.which("c++filt")

_INSTRUCTION = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(.*?)\s*;")
_SECTION = re.compile(r"^\s*\.section\s+\.text\.([^,\s]+),")
_LABEL = re.compile(r"^([^.\s][^\s:]*):\s*$")


def sass_functions(cubin: str) -> dict[str, dict[str, list[str]]]:
    """The SASS of a cubin: {kernel: {function: [instruction, ...]}}.

    Runs `nvdisasm -c` (code sections only) and relies on its text format:
    - each kernel is its own `.section .text.<kernel>,...`;
    - a function starts at a label line `<name>:` in column 0 (local labels start
      with a dot: `.L_x_12:`, `.text.<kernel>:`); the kernel's own body is under the
      kernel's name; ptxas' subroutines follow it in the same section, e.g.
      `$<kernel>$<mangled __noinline__ device function>` or
      `$__internal_0_$__cuda_sm20_rcp_rn_f32_slowpath`;
    - an instruction line is `/*<hex address>*/  [@[!]P<n>] OPCODE operands ;`,
      and each instruction is returned as its text between the address and the
      semicolon (predicate included), e.g. "@!P0 LDG.E.U16.STRONG.GPU R31, [R22.64]".

    nvdisasm rather than `cuobjdump -sass`: without -rdc a __noinline__ device
    function is not a `Function :` section of its own in cuobjdump's listing; ptxas
    puts a copy of it inside each calling kernel's section, and only nvdisasm names
    where that copy starts.
    """
    result = subprocess.run([NVDISASM, "-c", cubin], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    kernels: dict[str, dict[str, list[str]]] = {}
    kernel = function = None
    for line in result.stdout.splitlines():
        m = _SECTION.match(line)
        if m:
            kernel = function = m.group(1)
            kernels.setdefault(kernel, {}).setdefault(function, [])
            continue
        if kernel is None:
            continue
        m = _LABEL.match(line)
        if m:
            function = m.group(1)
            kernels[kernel].setdefault(function, [])
            continue
        m = _INSTRUCTION.match(line)
        if m:
            kernels[kernel][function].append(m.group(1))
    return kernels


def opcode(instruction: str) -> str:
    """The mnemonic with its modifiers, predicate dropped: "@!P0 LDG.E.128 R4, [R2.64]"
    -> "LDG.E.128"."""
    parts = instruction.split()
    if parts and parts[0].startswith("@"):
        parts = parts[1:]
    return parts[0] if parts else ""


LOCAL_MEMORY = re.compile(r"^(LDL|STL)(\.|$)")
TENSOR_CORE = re.compile(r"^(HMMA|HGMMA)\.")
WIDE_OR_ASYNC_LOAD = re.compile(r"^(LDGSTS|LDG\.E[.\w]*\.128|UTMALDG|UBLKCP)(\.|$)")
STRONG_LOAD = re.compile(r"^LDG?\.E[.\w]*\.STRONG\.(GPU|SYS)(\.|$)")
PEER_STORE = re.compile(r"^STAS(\.64)?$")   # st.async into a peer CTA's shared memory
TX_WAIT = re.compile(r"^SYNCS\.PHASECHK\.TRANS64(\.TRYWAIT)?$")  # an mbarrier's bytes
CLUSTER_ARRIVALS = 2   # cluster plans meet at the hardware barrier at the start and the end
# sm_90a grid kernels: the multicast staging of grid plans in clusters, a bulk copy to
# every CTA of the cluster and the mbarrier wait its bytes complete.
MULTICAST_STAGING = (re.compile(r"^UBLKCP\.S\.G\.MULTICAST$"), TX_WAIT)
# The reduce split's peer reads: ld.shared::cluster.v4 through the generic window.
PEER_LOAD = re.compile(r"^LD\.E\.128$")
_PROPERTIES = re.compile(r"Function properties for (\S+)\s*\n\s*(\d+) bytes stack frame, "
                         r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _demangle(names):
    names = list(names)
    if CXXFILT is None or not names:
        return {n: n for n in names}
    result = subprocess.run([CXXFILT], input="\n".join(names) + "\n", capture_output=True,
                            text=True, timeout=60)
    out = result.stdout.splitlines()
    if result.returncode != 0 or len(out) != len(names):
        return {n: n for n in names}
    return dict(zip(names, out))


def _compile(source, arch, outdir):
    cubin = os.path.join(outdir, f"{os.path.splitext(source)[0]}_{arch}.cubin")
    cmd = [NVCC, "-std=c++17", "-O3", f"-arch={arch}", "-cubin", os.path.join(CSRC, source),
           "-o", cubin, *TORCH_NVCC_DEFINES, "-Xptxas", "-v"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return cubin, result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def cubins(tmp_path_factory):
    """{(source, arch): (cubin path, nvcc return code, nvcc + ptxas -v log)}, each
    source compiled once per arch."""
    if NVCC is None:
        pytest.skip("nvcc not found (no CUDA toolkit)")
    if NVDISASM is None:
        pytest.skip("nvdisasm not found (CUDA toolkit bin, PATH, or triton's "
                    "backends/nvidia/bin)")
    outdir = str(tmp_path_factory.mktemp("sass"))
    jobs = [(s, a) for s in SOURCES + (PROBES,) for a in ARCHS]
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        results = pool.map(lambda job: _compile(*job, outdir), jobs)
        return dict(zip(jobs, results))


def _violations(name, functions, arch, cluster, reduce=False):
    """What kernel `name` ({function: instructions}, its subroutines included) breaks;
    `cluster`: a cluster kernel, which exchanges through its peers' shared memory;
    `reduce`: the reduce-split grid kernel, which reads its peers' partial sums."""
    found = []
    everything = [(f, i, opcode(i)) for f, ins in functions.items() for i in ins]
    local = sorted({op for _, _, op in everything if LOCAL_MEMORY.match(op)})
    if local:
        found.append(f"local memory: {', '.join(local)}")
    mma = {op for _, _, op in everything if TENSOR_CORE.match(op)}
    if not mma:
        found.append("no tensor-core instruction (HMMA" + ("/HGMMA" if arch == "sm_90a" else "")
                     + ")")
    ops = {op for _, _, op in everything}
    loads = sorted({op for op in ops if op.startswith(("LDG", "LD.", "UTMA", "UBLK"))})
    if cluster:
        if not any(PEER_STORE.match(op) for op in ops):
            found.append("no st.async into a peer's shared memory (STAS[.64])")
        if not any(TX_WAIT.match(op) for op in ops):
            found.append("no mbarrier wait for the peers' bytes (SYNCS.PHASECHK.TRANS64)")
        arrivals = sum(1 for _, _, op in everything if op == "UCGABAR_ARV")
        if arrivals > CLUSTER_ARRIVALS:
            found.append(f"{arrivals} cluster barrier arrivals (UCGABAR_ARV): at most "
                         f"{CLUSTER_ARRIVALS}, the start and the end; a step exchanges "
                         "through mbarriers")
    else:
        if not any(WIDE_OR_ASYNC_LOAD.match(op) for op in loads):
            found.append("no 16-byte or async global load (LDGSTS, LDG.E*.128, UTMALDG, UBLKCP); "
                         f"global loads are: {', '.join(loads) or 'none'}")
        if reduce:
            arrivals = sum(1 for _, _, op in everything if op == "UCGABAR_ARV")
            if arrivals <= CLUSTER_ARRIVALS:
                found.append(f"{arrivals} cluster barrier arrivals (UCGABAR_ARV): a reduce "
                             "split meets its cluster every step, beyond the start and the end")
            if not any(PEER_LOAD.match(op) for op in ops):
                found.append("no 16-byte load of the peers' partial sums (LD.E.128)")
        elif arch == "sm_90a":
            found += [f"no {rule.pattern} (multicast staging)" for rule in MULTICAST_STAGING
                      if not any(rule.match(op) for op in ops)]
    strong = {}
    for f, _, op in everything:
        own = f[len(name) + 2:] if f.startswith(f"${name}$") else f
        if STRONG_LOAD.match(op) and "barrier_wait" not in own:
            strong.setdefault(op, set()).add("kernel body" if f == name else f)
    if strong:
        found.append("strong loads outside barrier_wait: " + "; ".join(
            f"{op} in {', '.join(sorted(where))}" for op, where in sorted(strong.items())))
    return found


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", SOURCES)
def test_kernel_instruction_mix(cubins, source, arch):
    cubin, returncode, log = cubins[source, arch]
    assert returncode == 0, f"nvcc failed for {source} {arch}:\n{log}"
    sass = sass_functions(cubin)
    kinds = list(KIND[source]) + (list(SM90_KIND[source]) if arch == "sm_90a" else [])
    problems = []
    for kind in kinds:
        kernels = {k: f for k, f in sass.items() if kind in k}
        names = _demangle(kernels)
        assert kernels, (f"{source} {arch}: no {kind} in the cubin; kernels found: "
                         f"{sorted(_demangle(sass).values())}")
        dtypes = {"__half" if "6__half" in k else "__nv_bfloat16" if "13__nv_bfloat16" in k
                  else "float" for k in kernels}
        expected = DTYPES.get(kind, {"float", "__half", "__nv_bfloat16"})
        if dtypes != expected:
            problems.append(f"  {kind} instances for {', '.join(sorted(expected))} expected; "
                            f"found {sorted(dtypes)}")
        for k in sorted(kernels):
            for v in _violations(k, kernels[k], arch, kind in CLUSTER_KINDS, kind in REDUCE_KINDS):
                problems.append(f"  {names[k]}: {v}")
    # ptxas -v: every function it compiled, kernels and device functions alike.
    properties = _PROPERTIES.findall(log)
    assert properties, f"{source} {arch}: no 'Function properties' in the ptxas -v log:\n{log}"
    for fn, frame, stores, loads in sorted(set(properties)):
        if (frame, stores, loads) != ("0", "0", "0"):
            problems.append(f"  {_demangle([fn])[fn]}: ptxas -v: {frame} bytes stack frame, "
                            f"{stores} bytes spill stores, {loads} bytes spill loads")
    if problems:
        pytest.fail(f"{source} for {arch}: {len(problems)} violation(s) of the instruction-mix "
                    "rules (DESIGN.md §5):\n" + "\n".join(problems), pytrace=False)


# What each latency probe of csrc/lstm_probe.cu must execute for its figure to mean
# what rnnfast/backends/probe.py says (kernel name part -> instruction patterns, each
# of which must occur in the kernel or its subroutines). ptxas deletes an mma whose
# result is unused, which would leave an mma probe timing an empty loop.
PROBE_NEEDS = {
    "l2_chase_kernel": (r"^LDG\.E\.STRONG\.GPU$",),                  # ld.global.cg: L2, not L1
    "grid_phase_kernel": (r"^REDG?\.E\.ADD\.64\.STRONG\.GPU$",     # grid_barrier_arrive
                          r"^LDG\.E\.64\.STRONG\.GPU$",             # grid_barrier_wait's poll
                          r"^LDGSTS\.E\.BYPASS\.128$"),              # the exchange's cp.async.cg
    "mma_kernelILi1E": (r"^HMMA\.16816\.F32$",),
    "mma_kernelILi8E": (r"^HMMA\.16816\.F32$",),
}
SM90_PROBE_NEEDS = {"cluster_phase_kernel": (PEER_STORE.pattern, TX_WAIT.pattern),
                    # the reduce splits' meeting: the cluster barrier, the peers' sums
                    "cluster_reduce_kernel": (r"^UCGABAR_ARV$", PEER_LOAD.pattern),
                    # its multicast variant: the grid plans' staging (MULTICAST_STAGING)
                    "grid_phase_kernel": tuple(rule.pattern for rule in MULTICAST_STAGING)}


@pytest.mark.parametrize("arch", ARCHS)
def test_probes_time_the_instructions_they_name(cubins, arch):
    cubin, returncode, log = cubins[PROBES, arch]
    assert returncode == 0, f"nvcc failed for {PROBES} {arch}:\n{log}"
    sass = sass_functions(cubin)
    needs = dict(PROBE_NEEDS)
    for part, patterns in (SM90_PROBE_NEEDS.items() if arch == "sm_90a" else ()):
        needs[part] = needs.get(part, ()) + patterns
    problems = []
    for part, patterns in needs.items():
        kernels = [k for k in sass if part in k]
        if len(kernels) != 1:
            problems.append(f"{part}: {len(kernels)} kernels match")
            continue
        ops = {opcode(i) for ins in sass[kernels[0]].values() for i in ins}
        problems += [f"{part}: no {p}" for p in patterns if not any(re.match(p, op) for op in ops)]
        problems += [f"{part}: local memory {op}" for op in sorted(ops) if LOCAL_MEMORY.match(op)]
    assert problems == [], f"{PROBES} {arch}"

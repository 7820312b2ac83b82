"""The CUDA kernels themselves, run on the CPU: csrc/lstm_forward.cu and
csrc/lstm_backward.cu compiled by the host C++ compiler against csrc/tests/emulator.h
(every CUDA thread a fiber; ldmatrix and mma with PTX's fragment layouts; cp.async,
mbarriers, st.async, multicast bulk copies, the cluster and grid barriers with their
semantics), launched through the real launchers (csrc/tests/emulate.cpp fills their
argument structs as binding.cpp does). Each plan form the planner makes (grid,
multicast grid, register grid, reduce split, row passes, cluster, register cluster,
projection) runs in fp32 (3xTF32), fp16 and bf16 and must keep the DESIGN.md §6 rule
against the reference backend in the same dtype, with float64 as the truth.

What it checks on the way, beyond the results: shared-memory addressing and alignment of
every instruction's operand, fragment use, staging (a read before its cp.async wait
sees stale bytes; shared memory starts as NaN), the exchanges' mbarrier accounting,
barrier protocols (a launch that can never finish is reported as a deadlock), a store
past the launch's shared memory (it ends at an unmapped page); data races, by the
threads' shuffled turns (a new seeded order every round) and, for layers of up to 31
blocks, by ThreadSanitizer (test_no_data_races). What it cannot: memory ordering beyond
the barriers' happens-before (the emulator is sequentially consistent), timing, and the
hardware's own limits beyond the opt-in shared memory and cluster sizes. Needs the CUDA
headers (for cuda_fp16.h and the runtime API's types) and a C++ compiler; no GPU.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import random
import shutil
import statistics
import subprocess

import pytest
import torch

from rnnfast.backends import cuda as cuda_backend
from rnnfast.backends import reference
from rnnfast.backends.cuda import backward as cuda_bwd
from rnnfast.backends.cuda import forward as cuda_fwd
from rnnfast.backends.cuda import launch as cuda_launch
from rnnfast.backends.cuda import plan as cuda_plan

from helpers import (allowance_used_of_results, layer_args, planned_launches, reference_orders,
                     relabellings, results_vs_float64, rule_violations_vs_float64, weights_in_tf32)
from test_cuda_sources import TORCH_NVCC_DEFINES

CSRC = os.path.join(os.path.dirname(__file__), "..", "csrc")
CXX = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # lstm_kernels.h DType


def _cuda_include():
    """The CUDA toolkit's include folder (cuda_runtime_api.h, cuda_fp16.h), or None."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        homes += [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))]
    for home in filter(None, homes):
        for folder in (os.path.join(home, "include"), os.path.join(home, "targets", "x86_64-linux", "include")):
            if os.path.exists(os.path.join(folder, "cuda_runtime_api.h")):
                return folder
    return None


def _build(out, sanitize):
    """The emulate program in `out`; sanitize=True: the kernels and the launcher under
    ThreadSanitizer (-fsanitize=thread), the emulator telling it what orders what."""
    include = _cuda_include()
    flags = ["-std=c++17", "-O1", "-DRNNFAST_EMULATED", f"-I{include}", "-Wall", "-Wextra",
             "-Werror", "-Wno-unknown-pragmas",  # #pragma unroll is nvcc's
             *(d for d in TORCH_NVCC_DEFINES if d.startswith("-D"))]
    tsan = ["-g", "-fsanitize=thread"] if sanitize else []
    sources = [("lstm_forward.cu", ["-x", "c++", *tsan]), ("lstm_backward.cu", ["-x", "c++", *tsan]),
               ("tests/emulate.cpp", tsan),
               ("tests/emulator.cpp", ["-DRNNFAST_EMULATE_TSAN"] if sanitize else [])]
    objects, jobs = [], []
    for source, extra in sources:  # compiled side by side
        obj = out / (os.path.basename(source) + ".o")
        objects.append(str(obj))
        jobs.append(subprocess.Popen([CXX, *flags, *extra, "-c", os.path.join(CSRC, source), "-o",
                                      str(obj)], stderr=subprocess.PIPE, text=True))
    for job in jobs:
        _, err = job.communicate(timeout=900)
        assert job.returncode == 0, err
    exe = out / "emulate"
    done = subprocess.run([CXX, *(["-fsanitize=thread"] if sanitize else []), *objects, "-o", str(exe)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return str(exe)


@pytest.fixture(scope="module")
def emulate(tmp_path_factory):
    if CXX is None or _cuda_include() is None:
        pytest.skip("no C++ compiler, or no CUDA headers (cuda_runtime_api.h, cuda_fp16.h)")
    return _build(tmp_path_factory.mktemp("emulate"), sanitize=False)


@pytest.fixture(scope="module")
def emulate_tsan(tmp_path_factory):
    if CXX is None or _cuda_include() is None:
        pytest.skip("no C++ compiler, or no CUDA headers (cuda_runtime_api.h, cuda_fp16.h)")
    probe = subprocess.run([CXX, "-fsanitize=thread", "-x", "c++", "-", "-o", os.devnull],
                           input="int main() { return 0; }", capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"the C++ compiler cannot build with -fsanitize=thread: {probe.stderr[-200:]}")
    return _build(tmp_path_factory.mktemp("emulate_tsan"), sanitize=True)


class EmulatedExtension:
    """Stands in for rnnfast._C on CPU tensors: an H100's device_limits, and forward /
    backward (binding.cpp's arguments) run by the emulator: each call's inputs written to
    a folder of its own, the kernels run, their outputs read back into the tensors given.
    Records (direction, cluster, multicast, reg_k_tiles, reduce_ctas, pass_rows) of every
    launch that ran, as the GPU tests' recorder does."""

    class LaunchRefused(RuntimeError):
        pass

    def __init__(self, exe, folder):
        self.exe, self.folder, self.ran = exe, folder, []
        self.calls = itertools.count()

    def forward(self, xg, bias, w_hh, w_hr, h0x, hx, hidx, c, y, gates, cells, hidden, offsets,
                sizes, arrivals, timed_out, steps, reverse, units, proj_cols, unit_slices,
                block_rows, cluster, multicast, reg_k_tiles, pass_rows, spin_limit):
        P = w_hh.shape[1]
        outputs = [name for name, t in (("gates", gates), ("cells", cells), ("hidden", hidden))
                   if t is not None]
        if gates is not None and gates.data_ptr() == xg.data_ptr():
            outputs[0] = "gates_in_xg"  # fp32: the gates overwrite xg in place
        folder = self._launch(
            "forward", dict(xg=xg, w_hh=w_hh, h0=h0x[:, :P], c0=c, bias=bias, w_hr=w_hr,
                            offsets=offsets, sizes=sizes),
            [steps, c.shape[0], c.shape[1], P, xg.shape[0], reverse, DTYPES[w_hh.dtype], units,
             proj_cols, unit_slices, block_rows, cluster, multicast, reg_k_tiles, 0, pass_rows,
             spin_limit], outputs, timed_out)
        if folder is not None:
            self._read_into(folder, y=y, c=c, gates=gates, cells=cells, hidden=hidden)
            self.ran.append(("forward", cluster, multicast, reg_k_tiles, 0, pass_rows))

    def backward(self, dy, gates, cells, c0, w_hh, w_hr, dh_n, dc_n, dh0, dc0, dgates, dy_total,
                 gx, dhx, offsets, sizes, arrivals, timed_out, steps, reverse, units, proj_cols,
                 unit_slices, block_rows, cluster, multicast, reg_k_tiles, reduce_ctas,
                 spin_limit):
        folder = self._launch(
            "backward", dict(dy=dy, gates=gates, cells=cells, c0=c0, w_hh=w_hh, w_hr=w_hr,
                             dh_n=dh_n, dc_n=dc_n, offsets=offsets, sizes=sizes),
            [steps, c0.shape[0], c0.shape[1], w_hh.shape[1], gates.shape[0], reverse,
             DTYPES[w_hh.dtype], units, proj_cols, unit_slices, block_rows, cluster, multicast,
             reg_k_tiles, reduce_ctas, 0, spin_limit],
            ["dy_total"] if dy_total is not None else [], timed_out)
        if folder is not None:
            self._read_into(folder, dgates=dgates, dh0=dh0, dc0=dc0, dy_total=dy_total)
            self.ran.append(("backward", cluster, multicast, reg_k_tiles, reduce_ctas, 0))

    def _launch(self, direction, inputs, meta, outputs, timed_out):
        folder = self.folder / f"call{next(self.calls)}"
        folder.mkdir()
        for name, t in inputs.items():
            if t is not None:
                kind = torch.float32 if t.is_floating_point() else torch.int64
                (folder / f"{name}.bin").write_bytes(t.to(kind).contiguous().numpy().tobytes())
        (folder / "meta.txt").write_text(" ".join([*(str(int(v)) for v in meta), *outputs]))
        # Under ThreadSanitizer: the first race ends the run (exit 66) with its report.
        env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66 history_size=4")
        done = subprocess.run([self.exe, direction, str(folder)], capture_output=True, text=True,
                              timeout=900, env=env)
        if done.returncode == 5:  # as binding.cpp raises for a launch the driver refuses
            raise self.LaunchRefused(done.stderr.strip())
        if done.returncode == 6:  # a barrier wait gave up: the flag the host watches
            timed_out.fill_(1)
            return None
        assert done.returncode == 0, f"emulated {direction} failed (exit {done.returncode}):\n{done.stderr}"
        return folder

    @staticmethod
    def _read_into(folder, **outputs):
        for name, t in outputs.items():
            if t is not None:
                data = (folder / f"out_{name}.bin").read_bytes()
                t.copy_(torch.frombuffer(bytearray(data), dtype=torch.float32).view(t.shape))


def _emulated_backend(exe, monkeypatch, folder):
    """The cuda backend's own Python path (plans, exchange buffers, launch and
    fallbacks) on CPU tensors, its extension emulated by `exe`, planning for an H100."""
    extension = EmulatedExtension(exe, folder)
    for module in (cuda_backend, cuda_launch, cuda_fwd, cuda_bwd):
        monkeypatch.setattr(module, "_C", extension)
    h100 = cuda_backend.DeviceLimits(132, cuda_plan.H100_SMEM_PER_BLOCK, True, 9, ())
    monkeypatch.setattr(cuda_backend, "device_limits", lambda device: h100)
    return extension


@pytest.fixture
def emulated(emulate, monkeypatch, tmp_path):
    return _emulated_backend(emulate, monkeypatch, tmp_path)


def force_plans(monkeypatch, **plans):
    """plan_for gives `plans[direction]` (a refused launch still falls back to the plain
    grid, as on a GPU)."""
    real = cuda_backend.plan_for

    def plan_for(direction, device, dtype, batch, hidden, out_size, has_proj, plain=False):
        if plain or direction not in plans:
            return real(direction, device, dtype, batch, hidden, out_size, has_proj, plain)
        return plans[direction]
    monkeypatch.setattr(cuda_launch, "plan_for", plan_for)


def _h100_plan(direction, dtype, B, H, proj=0):
    plan = cuda_plan.make_plan(direction, B, H, proj or H, bool(proj), dtype.itemsize, 132,
                               cuda_plan.H100_SMEM_PER_BLOCK, 9)
    assert not isinstance(plan, str), plan
    return plan


def _runs_within_the_rule(emulated, dtype, T, B, I, H, proj=0, lengths=None, reverse=False,
                          plans=None):
    """The layer on the emulated kernels in `dtype` keeps DESIGN.md §6's rule against
    float64 (the reference backend in `dtype` as the peer), and the launches that ran
    are `plans` (default: the H100 planner's), not a fallback."""
    args64 = layer_args(T, B, I, H, proj=proj, lengths=lengths)
    kernels = (cuda_fwd.forward, cuda_bwd.backward)
    assert rule_violations_vs_float64(args64, dtype, reverse, kernels) == []
    batch = len(lengths) if lengths else B
    plans = plans or {d: _h100_plan(d, dtype, batch, H, proj) for d in ("forward", "backward")}
    assert sorted(set(emulated.ran)) == planned_launches(plans)


DTYPE_IDS = dict(argvalues=list(DTYPES), ids=["fp32", "fp16", "bf16"])


@pytest.mark.parametrize("dtype", **DTYPE_IDS)
@pytest.mark.parametrize("T,B,I,H,proj,lengths,reverse", [
    (7, 3, 5, 20, 0, None, False),         # clusters of 5 CTAs of 4 units
    (1, 1, 3, 20, 0, None, True),          # T = 1, one row
    (3, 37, 4, 12, 0, None, False),        # 5 batch blocks of 8 rows, a cluster each
    (7, 3, 5, 20, 0, [7, 4, 1], True),     # packed, reversed
    (7, 3, 5, 20, 11, None, True),         # projection: grid plans, two phases a step
    (6, 4, 3, 9, 5, [6, 6, 3, 2], False),  # packed with a projection
    (3, 3, 4, 256, 0, None, False),        # 16-bit: W_hh partly in registers, both ways
    # The cluster exchange's edges: H = 21, a last slice of one unit sent as a whole word
    # into the k-padding (the 16-bit backward takes a grid); H = 22 and 30, the 16-bit
    # backward's gates H x 2 bytes apart, sent in 4-byte words; packed and reversed.
    (6, 3, 5, 21, 0, None, False),
    (6, 3, 5, 22, 0, [6, 4, 1], True),
    (6, 3, 5, 30, 0, None, False),
    (4, 2, 3, 1, 0, None, False),          # one hidden unit
    (5, 2, 4, 96, 0, None, True),
    (2, 136, 3, 16, 0, None, False),       # 17 row tiles of 8
    (2, 64, 3, 256, 0, None, True),        # 64 rows at H = 256
    (4, 18, 3, 8, 3, [4] * 5 + [3] * 6 + [1] * 7, True),  # packed, projection, 18 rows
])
def test_planned_layers_keep_the_rule(emulated, dtype, T, B, I, H, proj, lengths, reverse):
    """The H100 planner's plans for small layers (every one a cluster plan without a
    projection, a grid with one)."""
    _runs_within_the_rule(emulated, dtype, T, B, I, H, proj, lengths, reverse)


@pytest.mark.parametrize("dtype", **DTYPE_IDS)
def test_flashrnn_width_packed_and_reversed_keeps_the_rule(emulated, dtype):
    """H = 700 (odd: a last block of 4 of its 8 units), 5 rows packed, reversed, as the
    H100 plans it: fp32 a grid of 88 blocks staging h(t-1) by multicast in clusters of 4,
    and a reduce-split backward in clusters of 8; 16-bit a cluster of 16 holding W_hh
    partly in registers, and a grid backward holding W_hh^T partly in registers, staging
    the gate gradients by multicast in clusters of 2."""
    _runs_within_the_rule(emulated, dtype, 3, 5, 3, 700, lengths=[3, 2, 2, 1, 1], reverse=True)


def _candidate(direction, dtype, B, H, slices, batch_blocks, proj=0, **form):
    plan = cuda_plan._candidate("grid", direction, B, H, proj or H, bool(proj), dtype.itemsize,
                                slices, batch_blocks, cuda_plan.H100_SMEM_PER_BLOCK, **form)
    assert plan is not None, (direction, B, H, proj, slices, batch_blocks, form)
    return plan


def _three_sm_grids(dtype, B, H, proj=0):
    """The plans of a 3-SM sm_80 part: plain grids, units and rows split unevenly."""
    return {d: cuda_plan.make_plan(d, B, H, proj or H, bool(proj), dtype.itemsize, 3,
                                   cuda_plan.H100_SMEM_PER_BLOCK, 8) for d in ("forward", "backward")}


def _row_passes(dtype):
    one = _candidate("forward", dtype, 37, 20, 4, 1)
    forward = dataclasses.replace(one, pass_rows=16, smem_bytes=cuda_plan.forward_smem_bytes(
        20, 20, False, dtype.itemsize, one.units, 0, one.block_rows, False, False, 0, 16))
    return {"forward": forward, "backward": _candidate("backward", dtype, 37, 20, 4, 1)}


# Plan forms by name: (plans of a dtype, or None for the H100 planner's; the layer: T, B,
# I, H, proj, lengths, reverse; the dtype test_no_data_races runs it in), each small
# enough for ThreadSanitizer's 8128 threads (31 blocks).
F32, F16 = torch.float32, torch.float16
FORMS = {
    # The plain grids of a 3-SM sm_80 part: units and rows split unevenly over 3 blocks,
    # every step a grid barrier through the counter; with a projection too.
    "3-SM grids": (lambda dtype: _three_sm_grids(dtype, 3, 20), (7, 3, 5, 20, 0, None, False), F32),
    "3-SM grids, projection": (lambda dtype: _three_sm_grids(dtype, 3, 20, 11),
                               (7, 3, 5, 20, 11, None, True), F32),
    # Clusters of 3 CTAs splitting the chain's 4H gate columns over 2 ragged batch blocks
    # (37 rows); the forward a grid staging h(t-1) by multicast in clusters of 2.
    "reduce split, multicast forward": (
        lambda dtype: {"forward": _candidate("forward", dtype, 37, 24, 6, 2, multicast=2),
                       "backward": _candidate("backward", dtype, 37, 24, 6, 2, reduce_ctas=3)},
        (4, 37, 3, 24, 0, None, True), F32),
    # A grid forward taking its 40 rows in passes of 16, 16 and 8, packed (the last pass's
    # rows end early).
    "row passes": (_row_passes, (4, 37, 3, 20, 0, [4] * 30 + [3] * 4 + [1] * 3, False), F32),
    # 16-bit: a grid backward holding W_hh^T partly in registers, staged by cp.async, and
    # by multicast in clusters of 2; 3 rows packed.
    "register grid backward": (
        lambda dtype: {"forward": _candidate("forward", dtype, 3, 64, 4, 1),
                       "backward": _candidate("backward", dtype, 3, 64, 4, 1, registers=True)},
        (5, 3, 3, 64, 0, [5, 3, 2], False), F16),
    "register multicast grid backward": (
        lambda dtype: {"forward": _candidate("forward", dtype, 3, 64, 4, 1),
                       "backward": _candidate("backward", dtype, 3, 64, 4, 1, registers=True,
                                              multicast=2)},
        (5, 3, 3, 64, 0, [5, 3, 2], True), F16),
    # The H100 planner's: clusters of 5 CTAs, packed and reversed; 5 batch blocks of 8
    # rows, a cluster of 3 each; 16-bit W_hh partly in registers both ways (16 CTAs); the
    # 16-bit exchange in 4-byte words (H = 22), packed and reversed.
    "clusters, packed": (None, (7, 3, 5, 20, 0, [7, 4, 1], True), F32),
    "clusters of 37 rows": (None, (3, 37, 4, 12, 0, None, False), F32),
    "register clusters": (None, (3, 3, 4, 256, 0, None, False), F16),
    "cluster exchange in 4-byte words": (None, (6, 3, 5, 22, 0, [6, 4, 1], True), F16),
}
SIXTEEN_BIT_FORMS = {"register grid backward", "register multicast grid backward"}


def _run_form(emulated, monkeypatch, name, dtype):
    make_plans, layer, _ = FORMS[name]
    plans = make_plans(dtype) if make_plans else None
    if plans:
        force_plans(monkeypatch, **plans)
    _runs_within_the_rule(emulated, dtype, *layer, plans=plans)


@pytest.mark.parametrize("dtype", **DTYPE_IDS)
@pytest.mark.parametrize("name", [n for n in FORMS if n not in SIXTEEN_BIT_FORMS and
                                  FORMS[n][0] is not None])
def test_forced_plan_forms_keep_the_rule(emulated, monkeypatch, name, dtype):
    _run_form(emulated, monkeypatch, name, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", sorted(SIXTEEN_BIT_FORMS))
def test_register_grid_backwards_keep_the_rule(emulated, monkeypatch, name, dtype):
    _run_form(emulated, monkeypatch, name, dtype)


@pytest.mark.parametrize("name", list(FORMS))
def test_no_data_races(emulate_tsan, monkeypatch, tmp_path, name):
    """Every plan form under ThreadSanitizer: each thread's accesses to shared and global
    memory, ordered only by what orders them on a GPU (__syncthreads, a warp's collective
    instruction, mbarrier phases, the cluster barrier, the grid counter's release and
    acquire). A write and another thread's access to the same byte with none of these
    between them fails with the report (the row-pass race of bfb27a9 did, whatever the
    schedule)."""
    emulated = _emulated_backend(emulate_tsan, monkeypatch, tmp_path)
    _run_form(emulated, monkeypatch, name, FORMS[name][2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("T,B,I,H,proj,lengths,reverse", [
    (5, 2, 4, 96, 0, None, False),
    (3, 37, 4, 12, 0, None, True),
    (4, 18, 3, 8, 3, [4] * 5 + [3] * 6 + [1] * 7, False),
    (2, 136, 3, 16, 0, None, False),       # 17 row tiles of 8 in one batch block
    (2, 48, 3, 128, 0, None, True),        # the backward's gate gradients (K = 4H) staged in
                                           # chunks (fp32: 4 of 160 columns, double-buffered)
])
def test_grids_on_three_sms_keep_the_rule(emulated, monkeypatch, dtype, T, B, I, H, proj,
                                          lengths, reverse):
    """The plain grids of a 3-SM sm_80 part: units, columns and rows split unevenly over
    3 blocks, whatever the layer's size."""
    plans = _three_sm_grids(dtype, len(lengths) if lengths else B, H, proj)
    force_plans(monkeypatch, **plans)
    _runs_within_the_rule(emulated, dtype, T, B, I, H, proj, lengths, reverse, plans)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("T,B,I,H,proj,slices,batch_blocks", [
    (4, 5, 3, 130, 35, (33, 33), 1),   # 33 blocks of 4 units, 2 projection columns each
    (6, 9, 8, 200, 119, (5, 3), 2),    # 40 units a block forward, 68 backward; 2 batch blocks
])
def test_16bit_projection_grids_keep_the_rule(emulated, monkeypatch, dtype, T, B, I, H, proj,
                                              slices, batch_blocks):
    """Found by a random search over layers and plans (csrc/README.md, "The kernels on a
    CPU"): in fp16 these used 1.16 and 1.98 times the rule's allowance while the
    reference backend rounded its recurrent product to 16 bits before adding it to the
    fp32 gates, one rounding a step the kernels do not make. With the reference's sums
    kept in fp32 (gemm.Product's out_dtype) the kernels' errors are the reference's."""
    plans = {d: _candidate(d, dtype, B, H, n, batch_blocks, proj)
             for d, n in zip(("forward", "backward"), slices)}
    force_plans(monkeypatch, **plans)
    _runs_within_the_rule(emulated, dtype, T, B, I, H, proj, None, True, plans)


# A random search over layers and plans, each seed its own layer (dtype, steps, rows,
# sizes, projection, packing, direction) and plans: a GPU planner's for 3 to 132 SMs of
# sm_80 or sm_90, or forms drawn at random (grid or cluster, slices, batch blocks,
# multicast, registers, reduce splits, row passes). Seeded: CI runs the same seeds every
# time. RNNFAST_EMULATE_FUZZ=N runs N seeds instead (about 0.5 s each).
FUZZ_SEEDS = range(int(os.environ.get("RNNFAST_EMULATE_FUZZ", 24)))
A100_SMEM_PER_BLOCK = 163 * 1024


def _random_layer(rng):
    dtype = rng.choice(list(DTYPES))
    T, I = rng.randint(1, 4), rng.randint(1, 9)
    B = rng.choice([1, 2, 3, 5, 8, 9, 16, 17, 24, 33, 40, 48, 64])
    H = rng.choice([1, 3, 4, 8, 12, 16, 20, 21, 24, 31, 32, 40, 48, 63, 64, 72, 96, 100, 128, 130,
                    160, 200, 256])
    proj = rng.randint(1, H - 1) if H > 1 and rng.random() < 0.25 else 0
    lengths = None
    if rng.random() < 0.3:
        lengths = sorted((rng.randint(1, T) for _ in range(B)), reverse=True)
        lengths[0] = T
    return dtype, T, B, I, H, proj, lengths, rng.random() < 0.5


def _random_plans(rng, dtype, B, H, proj):
    """{direction: plan} of at most 64 blocks each, or None where none was drawn."""
    out_size = proj or H
    if rng.random() < 0.4:
        sms, major = rng.choice([(3, 8), (7, 8), (16, 9), (20, 9), (40, 8), (108, 8), (132, 9)])
        smem = cuda_plan.H100_SMEM_PER_BLOCK if major == 9 else A100_SMEM_PER_BLOCK
        plans = {d: cuda_plan.make_plan(d, B, H, out_size, bool(proj), dtype.itemsize, sms, smem, major)
                 for d in ("forward", "backward")}
        return plans if all(not isinstance(p, str) and p.blocks <= 64 for p in plans.values()) else None
    plans = {}
    for direction in ("forward", "backward"):
        for _ in range(40):
            kind = "cluster" if not proj and rng.random() < 0.3 else "grid"
            form = {}
            if kind == "grid" and rng.random() < 0.3:
                form["multicast"] = rng.choice([2, 4])
            if dtype.itemsize == 2 and rng.random() < 0.4:
                form["registers"] = True
            if direction == "backward" and kind == "grid" and rng.random() < 0.3:
                form["reduce_ctas"] = rng.choice([2, 3, 4])
            if direction == "forward" and kind == "grid" and rng.random() < 0.2:
                form["passes"] = True
            plan = cuda_plan._candidate(kind, direction, B, H, out_size, bool(proj), dtype.itemsize,
                                        rng.randint(1, 12), rng.randint(1, 4),
                                        cuda_plan.H100_SMEM_PER_BLOCK, **form)
            if plan is not None and plan.blocks <= 64:
                plans[direction] = plan
                break
        else:
            return None
    return plans


@pytest.mark.parametrize("seed", FUZZ_SEEDS)
def test_random_layers_and_plans_keep_the_rule(emulated, monkeypatch, seed):
    rng = random.Random(seed)
    while True:
        dtype, T, B, I, H, proj, lengths, reverse = _random_layer(rng)
        plans = _random_plans(rng, dtype, len(lengths) if lengths else B, H, proj)
        if plans:
            break
    force_plans(monkeypatch, **plans)
    _runs_within_the_rule(emulated, dtype, T, B, I, H, proj, lengths, reverse, plans)


# Two fp32 layers with a projection from the random search whose first draw (seed 0)
# broke the rule (1.04 and 1.29 times the allowance, before the reference's orders
# relabelled the projection's outputs too). They amplify every rounding error about
# 2.5x a step, so a layer's largest error is one draw from a heavy tail: the reference
# itself, summing in another order, breaks the rule on about 1 draw in 40 there.
# RNNFAST_EMULATE_DRAWS=N judges N draws of each (csrc/README.md's figures: 40).
PROJECTION_DRAWS = range(int(os.environ.get("RNNFAST_EMULATE_DRAWS", 4)))


@pytest.mark.parametrize("T,B,I,H,proj,slices,batch_blocks", [
    (4, 33, 1, 72, 45, (4, 1), (3, 1)),  # forward a grid of 4 x 3 blocks, backward 1 block
    (6, 5, 6, 256, 77, (7, 7), (1, 1)),  # a 7-SM part's grids: 40 units a block
])
def test_fp32_projection_layers_err_as_the_reference_summing_in_another_order(
        emulated, monkeypatch, capsys, T, B, I, H, proj, slices, batch_blocks):
    """On layers where the rule's verdict on one draw is itself a draw, the kernels are
    judged over draws: how much of the rule's allowance they use, against the
    reference's orders, beside what 4 more orders of the reference (spares, each judged
    as the kernels are) use. The kernels' median must stay within 1.5x the spares'. The
    reference with its weights read in TF32 (one TF32 mma where three are due), judged
    the same way, must not: it used a median 700-990 times the allowance here."""
    fp32 = torch.float32
    plans = {d: _candidate(d, fp32, B, H, n, m, proj)
             for d, n, m in zip(("forward", "backward"), slices, batch_blocks)}
    force_plans(monkeypatch, **plans)
    kernels, spares, in_tf32 = [], [], []
    for seed in PROJECTION_DRAWS:
        args64 = layer_args(T, B, I, H, proj=proj, seed=seed)
        peers = reference_orders(H, proj)
        (ours, tf32, *results), exact = results_vs_float64(
            args64, fp32, False, (cuda_fwd.forward, cuda_bwd.backward),
            weights_in_tf32(reference.forward, reference.backward), *peers,
            *relabellings(H, proj, count=4, seed=5000))
        judged = results[:len(peers)]
        kernels.append(allowance_used_of_results(ours, judged, exact, fp32))
        in_tf32.append(allowance_used_of_results(tf32, judged, exact, fp32))
        spares += [allowance_used_of_results(r, judged, exact, fp32) for r in results[len(peers):]]
    assert sorted(set(emulated.ran)) == planned_launches(plans)
    with capsys.disabled():
        print(f"\nallowance used over {len(kernels)} draws (median, largest, draws over 1): kernels "
              f"{statistics.median(kernels):.2f}, {max(kernels):.2f}, {sum(u > 1 for u in kernels)}; "
              f"reference in other orders {statistics.median(spares):.2f}, {max(spares):.2f}, "
              f"{sum(u > 1 for u in spares)} of {len(spares)}; weights in TF32 {statistics.median(in_tf32):.0f}")
    assert statistics.median(kernels) <= 1.5 * statistics.median(spares), (kernels, spares)
    assert statistics.median(in_tf32) > 1.5 * statistics.median(spares), (in_tf32, spares)


def test_3xtf32_keeps_the_fp32_rule_over_1024_steps(emulated):
    """The fp32 kernels multiply through the 3xTF32 split (lstm_common.cuh), the tensor
    cores reading each part's 10 mantissa bits. Over 1024 steps the error against
    float64 must stay within DESIGN.md §6, forward and backward: at most twice the
    reference backend's in fp32 (clusters of 8 CTAs on the H100 plan)."""
    _runs_within_the_rule(emulated, torch.float32, 1024, 2, 4, 32)


def test_a_refused_cluster_launch_runs_the_plain_grid(emulated, monkeypatch):
    """A GPU that cannot place the plan's cluster (here: none of more than 4 CTAs) refuses
    the launch before anything runs; the backend then runs the plain grid plan, within
    the rule."""
    monkeypatch.setenv("RNNFAST_EMULATE_MAX_CLUSTER", "4")
    dtype = torch.float32
    planned = _h100_plan("forward", dtype, 3, 20)
    assert planned.kind == "cluster" and planned.unit_slices > 4
    plain = {d: cuda_plan.make_plan(d, 3, 20, 20, False, 4, 132, cuda_plan.H100_SMEM_PER_BLOCK,
                                    9, plain=True) for d in ("forward", "backward")}
    _runs_within_the_rule(emulated, dtype, 7, 3, 5, 20, 0, None, False, plain)


@pytest.mark.parametrize("name,exit_code,message", [
    ("deadlock", 3, "deadlock: every thread waits"),
    ("smem_overrun", 4, "segmentation fault"),
    ("misaligned_ldmatrix", 3, "is not 16-byte aligned"),
    ("divergent_warp", 3, "lanes meet at different collective instructions"),
    ("mbarrier_overwrite", 3, "was overwritten after its init"),
    ("peer_rank", 3, "CTA rank 2 in a cluster of 2"),
])
def test_the_emulator_stops_what_would_break_on_a_gpu(emulate, name, exit_code, message):
    """Each selftest kernel (csrc/tests/emulate.cpp) breaks one rule: half a block at a
    barrier the other half never reaches, a store past the shared memory, misaligned
    ldmatrix rows, a warp split between two collective instructions, an mbarrier
    clobbered, a st.async to a CTA outside the cluster. The emulator must stop each with
    its report, not return numbers."""
    done = subprocess.run([emulate, "selftest", name], capture_output=True, text=True, timeout=120)
    assert done.returncode == exit_code and message in done.stderr, done.stderr


def test_a_cp_async_destination_keeps_its_old_bytes_until_the_wait(emulate):
    """Read before cp.async.wait_group, the destination still holds what shared memory
    held (NaN bytes at launch); after it, the copied value."""
    done = subprocess.run([emulate, "selftest", "stale_cp_async"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    seen, landed = (float(v) for v in done.stdout.split())
    assert seen != seen and landed == 1.0  # NaN, then the value

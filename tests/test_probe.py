"""The latency probes without a GPU: what their figures replace in the models
(latency.measured_gpu), how verify's summary sets them beside the assumptions and
re-runs the CUDA model with them, and the Triton barrier and tagged-word probes'
kernels (in the interpreter, and compiled for sm_90). The CUDA probe kernels
(csrc/lstm_probe.cu) are compiled by tests/test_cuda_sources.py and their instruction
mix is checked by tests/test_cuda_sass.py; their timing needs a GPU (`python -m
rnnfast verify`)."""
import dataclasses
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from rnnfast.backends.barrier import BARRIER_SPIN_LIMIT
from rnnfast.backends.latency import H100, measured_gpu
from rnnfast.bench import explain
from rnnfast.verify import summary
from rnnfast.verify.stages import BENCH_CASES

FOUND = {"device": "NVIDIA H200", "sms": 132, "clock_hz": 1.98e9, "l2_round_trip_s": 0.45e-6,
         "l2_round_trip_clocks": 890.0, "barrier_s": 0.7e-6, "barrier_few_blocks_s": 0.55e-6,
         "grid_exchange_s": 1.2e-6,
         "grid_multicast_exchange_s": 1.3e-6, "multicast_blocks": 128, "multicast_size": 8,
         "triton_barrier_s": 0.9e-6, "triton_tagged_wait_s": 0.65e-6, "cluster_blocks": 16, "cluster_exchange_s": 0.21e-6,
         "cluster_reduce_s": 0.35e-6, "reduce_size": 8, "mma_latency_clocks": 33.4,
         "mma_sync_flops": 5.0e14, "skipped": {}, "failed": {}}


def test_measured_gpu_takes_each_measured_figure_and_keeps_the_other_assumptions():
    cuda = measured_gpu(FOUND, "cuda")
    assert (cuda.clock_hz, cuda.l2_round_trip_s, cuda.barrier_s) == (1.98e9, 0.45e-6, 0.7e-6)
    assert (cuda.cluster_exchange_s, cuda.mma_latency_clocks) == (0.21e-6, 33)
    assert cuda.cluster_reduce_s == 0.35e-6
    assert cuda.mma_sync_fraction == pytest.approx(5.0e14 / H100.tensor_flops)
    assert cuda.l2_bytes_per_s_per_sm == pytest.approx(64 * 1.98e9)  # 64 B a clock, at this clock
    assert cuda.name == "NVIDIA H200, measured figures"
    # Multicast staging costs what its exchange takes over cp.async's, never less than 0.
    assert cuda.multicast_extra_s == pytest.approx(0.1e-6)
    assert measured_gpu({**FOUND, "grid_multicast_exchange_s": 1.1e-6}, "cuda").multicast_extra_s == 0
    # Triton's barrier is its own; everything else is the same GPU (its tagged-word
    # exchange too, which only the Triton model uses).
    assert cuda.tagged_wait_s == 0.65e-6
    triton = measured_gpu(FOUND, "triton")
    assert triton.barrier_s == 0.9e-6 and dataclasses.replace(triton, barrier_s=0.7e-6) == cuda
    # What was not measured stays assumed: the chip-wide L2 rate always, and here the
    # cluster figures of a GPU without clusters.
    partial = measured_gpu({k: v for k, v in FOUND.items() if not k.startswith("cluster")}, "cuda")
    assert partial.cluster_exchange_s == H100.cluster_exchange_s
    assert partial.cluster_reduce_s == H100.cluster_reduce_s
    assert partial.l2_bytes_per_s == H100.l2_bytes_per_s
    assert measured_gpu({"device": "x"}, "triton") == dataclasses.replace(H100, name="x, measured figures")


def test_summary_sets_the_figures_beside_the_assumptions_and_reruns_the_cuda_model():
    flash = next(case for case, _ in BENCH_CASES if case.group == "flashrnn-dense")
    rows = [{"case": flash.name, "mode": "fwd", "provider": "torch", "status": "ok", "median_ms": 2.05},
            {"case": flash.name, "mode": "fwd", "provider": "rnnfast/cuda", "status": "ok", "median_ms": 2.31},
            {"case": flash.name, "mode": "fwd", "provider": "torch", "status": "ok", "median_ms": 9.99}]
    found = {**FOUND, "skipped": {"triton_barrier_s": "triton is not installed"},
             "failed": {"cluster_exchange_s": "LaunchRefused: cluster launch of the phase probe was refused"}}
    del found["triton_barrier_s"]
    lines = summary.model_section(found, rows)
    text = "\n".join(lines)
    assert "| grid barrier, CUDA kernels | 1 | 0.7 | µs |" in text
    assert "| grid barrier, 16 blocks arriving | 1 | 0.55 | µs |" in text
    assert "| grid barrier + a dependent L2 copy | 1.6 | 1.2 | µs |" in text
    assert "| grid barrier + a dependent multicast copy | 1.6 | 1.3 | µs |" in text
    assert "multicast in 16 clusters of 8" in text
    assert "| grid barrier, Triton kernels | 1 | not measured | µs |" in text
    assert "| tagged-word exchange, Triton kernels | 0.9 | 0.65 | µs |" in text
    assert "| mma.sync rate, 8 warps an SM | 660 | 500 | TFLOP/s |" in text
    assert "- not measured, triton_barrier_s: triton is not installed" in text
    assert "- **failed**, cluster_exchange_s: LaunchRefused: cluster launch" in text
    assert "| cluster exchange: st.async to every peer, mbarrier wait | 0.3 | 0.21 | µs |" in text
    assert "cluster of 16 blocks" in text
    assert "| reduce split: cluster barrier, peers' partial sums | 0.5 | 0.35 | µs |" in text
    assert "reduce split in clusters of 8" in text
    # The model's rows: the H100 assumptions, then the measured figures, then this run.
    assumed = explain.cuda_layers(flash)[1]
    measured = explain.cuda_layers(flash, measured_gpu(found, "cuda"))[1]
    assert measured < assumed  # every measured latency above is below its assumption
    assert (f"| {flash.name} | fwd | {assumed * 1e3:.3f} | {measured * 1e3:.3f} | 2.310 | 2.050 |"
            in text)
    assert summary.model_section({}, rows) == []


def test_the_triton_barrier_probe_counts_rounds_and_gives_up_when_alone(monkeypatch):
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("the interpreter test; on a GPU, verify's probe stage runs the kernel")
    from rnnfast.backends.triton.probe import barrier_rounds_kernel

    arrivals, timed_out = torch.zeros(1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    barrier_rounds_kernel[(1,)](arrivals, timed_out, 5, SPIN_LIMIT=BARRIER_SPIN_LIMIT)
    assert (int(arrivals), int(timed_out)) == (5, 0)
    # Two programs, run one after the other by the interpreter: the first waits for a
    # second that cannot arrive, gives up after SPIN_LIMIT polls and raises the flag.
    arrivals.zero_()
    barrier_rounds_kernel[(2,)](arrivals, timed_out, 3, SPIN_LIMIT=8)
    assert int(timed_out) == 1 and int(arrivals) >= 1 << 30


def test_the_triton_tagged_word_probe_counts_rounds_and_gives_up_when_alone():
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("the interpreter test; on a GPU, verify's probe stage runs the kernel")
    from rnnfast.backends.triton.probe import tagged_rounds_kernel

    words, timed_out = torch.zeros(2 * 2, dtype=torch.int64), torch.zeros(1, dtype=torch.int32)
    tagged_rounds_kernel[(1,)](words, timed_out, 5, SPIN_LIMIT=BARRIER_SPIN_LIMIT, PROGRAMS=2)
    # Round 4 in slot 0, round 3 in slot 1: the tag (round + 1) over the program's index.
    assert words.tolist()[::2] == [5 << 32, 4 << 32] and int(timed_out) == 0
    # Two programs, run one after the other by the interpreter: the first waits for the
    # second's word of round 0, which cannot come; it gives up after SPIN_LIMIT polls.
    words.zero_()
    tagged_rounds_kernel[(2,)](words, timed_out, 3, SPIN_LIMIT=8, PROGRAMS=2)
    assert int(timed_out) == 1


def test_the_triton_probes_compile_for_sm90_as_cooperative_kernels():
    pytest.importorskip("triton")
    script = textwrap.dedent(f"""
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from rnnfast.backends.triton.probe import barrier_rounds_kernel as kernel
        from rnnfast.backends.triton.probe import tagged_rounds_kernel
        source = ASTSource(kernel, {{"arrivals_ptr": "*i32", "timeout_ptr": "*i32", "rounds": "i32",
                                     "SPIN_LIMIT": "constexpr"}}, {{"SPIN_LIMIT": {BARRIER_SPIN_LIMIT}}})
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=4, launch_cooperative_grid=True))
        print(compiled.asm["ptx"])
        print("TAGGED")
        source = ASTSource(tagged_rounds_kernel,
                           {{"words_ptr": "*i64", "timeout_ptr": "*i32", "rounds": "i32",
                             "SPIN_LIMIT": "constexpr", "PROGRAMS": "constexpr"}},
                           {{"SPIN_LIMIT": {BARRIER_SPIN_LIMIT}, "PROGRAMS": 256}})
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=8, launch_cooperative_grid=True))
        print(compiled.asm["ptx"])
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ptx, tagged = done.stdout.split("TAGGED")
    # The kernels' barrier as they compile it: the release arrival, the volatile
    # poll, the acquire after it.
    assert "atom.global.gpu.release.add" in ptx and "ld.volatile.global" in ptx, ptx[-2000:]
    assert "ld.global.gpu.acquire" in ptx, ptx[-2000:]
    # Their tagged-word exchange: whole 8-byte words stored by relaxed atomic exchange,
    # polled by volatile loads (tests/test_triton_aot.py checks the forward's the same way).
    assert "atom.global.gpu.relaxed.exch.b64" in tagged and "ld.volatile.global.b64" in tagged


def test_the_reduce_probe_takes_the_largest_cluster_the_gpu_holds(monkeypatch):
    """cluster_reduce's launch shape (the timing needs a GPU): clusters of 8 where the
    GPU holds one, as many as fit one block per SM (or as it holds); else 4, else 2;
    else it says no cluster fits, which measure() records under "failed"."""
    from rnnfast.backends import probe

    class Extension:
        LaunchRefused = RuntimeError

        def __init__(self):
            self.launches = set()

        def probe_cluster_reduce(self, blocks, cluster, rounds, out):
            self.launches.add((blocks, cluster, tuple(out.shape), out.dtype))

    monkeypatch.setattr(probe, "_launch_seconds", lambda launch, device: launch() or 1e-3)
    every = [132 // c if c >= 2 else 0 for c in range(17)]
    for resident, blocks, size in [(every, 128, 8),
                                   ([3 if c == 8 else n for c, n in enumerate(every)], 24, 8),
                                   ([n if c == 4 else 0 for c, n in enumerate(every)], 132, 4),
                                   ([n if c == 2 else 0 for c, n in enumerate(every)], 132, 2)]:
        ext = Extension()
        found = probe.cluster_reduce(ext, torch.device("cpu"), 132, tuple(resident))
        assert found["reduce_size"] == size
        assert ext.launches == {(blocks, size, (1,), torch.float32)}
    with pytest.raises(RuntimeError, match="no cluster of"):
        probe.cluster_reduce(Extension(), torch.device("cpu"), 132, (0,) * 17)


def test_the_multicast_probe_takes_the_largest_cluster_the_gpu_holds_at_least_twice(monkeypatch):
    """grid_multicast_phase's launch shape (the timing itself needs a GPU): clusters of 8
    where the GPU holds two or more, as many as fit one block per SM; else 4, else 2;
    else it says no cluster fits, which measure() records under "failed"."""
    from rnnfast.backends import probe

    class Extension:
        LaunchRefused = RuntimeError

        def __init__(self):
            self.launches = set()

        def probe_phases(self, rows, arrivals, timed_out, rounds, blocks, cluster, multicast,
                         exchange, spin_limit):
            self.launches.add((tuple(rows.shape), blocks, cluster, multicast, exchange))

    monkeypatch.setattr(probe, "_launch_seconds", lambda launch, device: launch() or 1e-3)
    monkeypatch.setattr(probe, "watch_timeout_flag", lambda *args: None)
    monkeypatch.setattr(probe, "raise_if_barrier_timed_out", lambda **kwargs: None)
    every = [132 // c if c >= 2 else 0 for c in range(17)]
    for resident, blocks, size in [(every, 128, 8),
                                   ([1 if c == 8 else n for c, n in enumerate(every)], 132, 4),
                                   ([n if c == 2 else 0 for c, n in enumerate(every)], 132, 2)]:
        ext = Extension()
        found = probe.grid_multicast_phase(ext, torch.device("cpu"), 132, tuple(resident))
        assert (found["multicast_blocks"], found["multicast_size"]) == (blocks, size)
        assert ext.launches == {((2, blocks, 256, 4), blocks, 0, size, True)}
    with pytest.raises(RuntimeError, match="no two clusters"):
        probe.grid_multicast_phase(Extension(), torch.device("cpu"), 132, (0,) * 17)

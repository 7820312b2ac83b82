"""Correctness check, then timing / memory of each provider, all in the same run.

Method (DESIGN.md §8): warm-up, then many repeats timed with CUDA events on GPU
(perf_counter around a synchronize elsewhere); median and spread (quartiles, min/max);
inputs and output gradients rotate over a few tensors so no repeat runs on the cache
the previous one left warm. Before a provider is timed for a case its outputs, final
states and gradients (input and every weight) are compared with torch.nn.LSTM's; one
that disagrees is reported as failed and not timed.
"""
from __future__ import annotations

import statistics
import time
import traceback
from typing import Callable, Optional

import torch
from torch import nn

from .cases import Case
from .frozen import SCALING_MODES, run_count as scaling_run_count, run_scaling
from .providers import BASELINE, Provider

ROTATE = 3


def tolerance(dtype: torch.dtype, device: torch.device) -> float:
    """Max relative difference (to the largest magnitude of each tensor) allowed against
    nn.LSTM. fp32 on CUDA allows TF32 where torch does (cuDNN's fp32 RNN uses TF32
    unless torch.backends.cudnn.allow_tf32 is off), which carries ~1e-3 relative error."""
    if dtype == torch.float64:
        return 1e-8
    if dtype == torch.float32:
        tf32 = device.type == "cuda" and (torch.backends.cudnn.allow_tf32
                                          or torch.backends.cuda.matmul.allow_tf32)
        return 1e-2 if tf32 else 1e-4
    return 5e-2  # bf16 / fp16, the same bound as `python -m rnnfast check`


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_reference(case: Case, device: torch.device) -> nn.LSTM:
    torch.manual_seed(0)
    return nn.LSTM(case.I, case.H, case.layers, device=device, dtype=case.torch_dtype)


def make_inputs(case: Case, device: torch.device):
    """ROTATE inputs x [T, B, I] and output gradients [T, B, H]."""
    g = torch.Generator(device="cpu").manual_seed(1)
    xs = [torch.randn(case.T, case.B, case.I, generator=g).to(device, case.torch_dtype) for _ in range(ROTATE)]
    gouts = [torch.randn(case.T, case.B, case.H, generator=g).to(device, case.torch_dtype) for _ in range(ROTATE)]
    return xs, gouts


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    scale = b.abs().max().item() or 1.0
    return (a - b).abs().max().item() / scale


def _grads(model: nn.Module, x: torch.Tensor, gout: torch.Tensor):
    x = x.detach().requires_grad_(True)
    out, (h, c) = model(x)
    params = [p for _, p in sorted(model.named_parameters())]
    grads = torch.autograd.grad([out, h, c], [x, *params],
                                [gout, torch.ones_like(h), torch.ones_like(c)])
    return [out.detach(), h.detach(), c.detach(), *grads]


def check(model: nn.Module, ref: nn.Module, x: torch.Tensor, gout: torch.Tensor) -> float:
    """Largest relative difference to ref over outputs, states and all gradients."""
    ours, theirs = _grads(model, x, gout), _grads(ref, x, gout)
    return max(_max_rel(a, b) for a, b in zip(ours, theirs))


def set_trainable(model: nn.Module, mode: str, layers: int) -> None:
    """Freezes what a mode freezes, by nn.LSTM parameter names (shared by all providers);
    rnnfast modules go through rnnfast.freeze so their masks stay consistent."""
    names = [n for n, _ in model.named_parameters()]
    if mode == "frozen_layers":
        frozen = [n for n in names if not n.endswith(f"_l{layers - 1}")]
    elif mode == "bias_only":
        frozen = [n for n in names if not n.startswith("bias")]
    else:
        frozen = []
    import rnnfast
    if isinstance(model, rnnfast.LSTM):
        rnnfast.unfreeze(model, params=names)
        if frozen:
            rnnfast.freeze(model, params=frozen)
    else:
        for n, p in model.named_parameters():
            p.requires_grad_(n not in frozen)


def make_step(model: nn.Module, mode: str, xs, gouts, device: torch.device):
    """(prepare, timed) callables for one repeat of `mode`; prepare runs untimed before
    timed (zeroing gradients, and the forward pass for the backward-only modes: 'bwd',
    and the frozen-rows modes, whose input needs no gradient). Each call moves to the
    next rotated input."""
    counter = iter(range(1 << 62))
    state = {}
    x_needs_grad = mode in ("fwdbwd", "bwd", "memory")
    backward_only = mode == "bwd" or mode in SCALING_MODES
    xs = [x.detach().requires_grad_(x_needs_grad) for x in xs]

    def prepare():
        k = next(counter) % len(xs)
        model.zero_grad(set_to_none=True)
        xs[k].grad = None
        state["x"], state["g"] = xs[k], gouts[k]
        if backward_only:
            state["out"] = model(state["x"])[0]

    if mode == "fwd":
        def timed():
            with torch.no_grad():
                model(state["x"])
    elif backward_only:
        def timed():
            state.pop("out").backward(state["g"])
    else:
        def timed():
            out, _ = model(state["x"])
            out.backward(state["g"])
    return prepare, timed


def time_step(prepare: Callable, timed: Callable, device: torch.device, repeats: int, warmup: int):
    """Seconds per repeat, after `warmup` untimed repeats."""
    for _ in range(warmup):
        prepare()
        timed()
    sync(device)
    times = []
    if device.type == "cuda":
        events = []
        for _ in range(repeats):
            prepare()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            timed()
            end.record()
            events.append((start, end))
        sync(device)
        times = [s.elapsed_time(e) / 1e3 for s, e in events]
    else:
        for _ in range(repeats):
            prepare()
            sync(device)
            t0 = time.perf_counter()
            timed()
            sync(device)
            times.append(time.perf_counter() - t0)
    return times


def summarize(times) -> dict:
    qs = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    ms = [t * 1e3 for t in times]
    return {"median_ms": statistics.median(ms), "q1_ms": qs[0] * 1e3, "q3_ms": qs[2] * 1e3,
            "min_ms": min(ms), "max_ms": max(ms), "repeats": len(ms)}


def peak_memory(model: nn.Module, xs, gouts, device: torch.device) -> int:
    """Bytes a training step needs beyond what exists before it: on CUDA the peak of
    max_memory_allocated over one forward+backward; on CPU the bytes autograd saves for
    backward (parameters excluded), the part of training memory an LSTM controls."""
    prepare, timed = make_step(model, "memory", xs, gouts, device)
    prepare()
    timed()  # one step first, so lazily created buffers and caches are not counted
    prepare()
    x, g = xs[0].detach().requires_grad_(True), gouts[0]
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out, _ = model(x)
        out.backward(g)
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        model.zero_grad(set_to_none=True)
        return int(peak)
    from rnnfast.profiling import saved_activation_bytes
    saved, (out, _) = saved_activation_bytes(lambda: model(x), exclude=list(model.parameters()))
    out.backward(g)
    model.zero_grad(set_to_none=True)
    return int(saved)


def _case_fields(case: Case) -> dict:
    """What every row of a case starts with: its name and shape (not its mode list)."""
    return {"case": case.name, **{k: v for k, v in case.as_dict().items() if k not in ("name", "modes")}}


def run_count(case: Case, providers: list[Provider]) -> int:
    """How many rows (progress steps) run_case makes."""
    return sum(scaling_run_count(m, case.H, providers) if m in SCALING_MODES else len(providers)
               for m in case.modes)


def run_case(case: Case, providers: list[Provider], device: torch.device, repeats: int,
             warmup: int, floors: Optional[Callable] = None, progress=None) -> list[dict]:
    """One row per (mode, provider) of the case, the baseline's rows included.
    floors(case, mode) -> dict of the limit for that mode (floor.case_floor), optional."""
    ref = make_reference(case, device)
    xs, gouts = make_inputs(case, device)
    tol = tolerance(case.torch_dtype, device)
    rows = []
    built: dict[str, tuple] = {}  # provider -> (model or None, status, max_rel_diff)
    for p in providers:
        if p.skip is not None:
            built[p.name] = (None, p.skip, None)
            continue
        try:
            model = p.build(ref)
            diff = 0.0 if p.name == BASELINE else check(model, ref, xs[0], gouts[0])
            status = "ok" if diff <= tol else f"failed correctness: max rel diff {diff:.2e} > {tol:g}"
            built[p.name] = (model if status == "ok" else None, status, diff)
        except Exception as e:  # a provider that crashes is reported, the run goes on
            built[p.name] = (None, f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                             [:200], None)
            if progress is not None:
                progress.write(f"{p.name} on {case.name}:\n{traceback.format_exc()}")
    for mode in case.modes:
        if mode in SCALING_MODES:
            base_row = {**_case_fields(case), "mode": mode, "tolerance": tol}
            rows += run_scaling(case, mode, built, device, repeats, warmup, xs, gouts, base_row,
                                progress)
            continue
        base_value = None
        for p in providers:
            if progress is not None:
                progress.start(f"{case.name} {mode} {p.name}")
            model, status, diff = built[p.name]
            row = {**_case_fields(case),
                   "mode": mode, "provider": p.name, "status": status,
                   "max_rel_diff": diff, "tolerance": tol}
            if model is not None and p.unsupported_modes and mode in p.unsupported_modes:
                row["status"] = f"unsupported mode: {p.unsupported_modes[mode]}"
                model = None
            if model is not None:
                try:
                    set_trainable(model, mode, case.layers)
                    if mode == "memory":
                        row["peak_bytes"] = peak_memory(model, xs, gouts, device)
                        value = row["peak_bytes"]
                    else:
                        row.update(summarize(time_step(*make_step(model, mode, xs, gouts, device),
                                                       device, repeats, warmup)))
                        value = row["median_ms"]
                        if floors is not None:
                            f = floors(case, mode)
                            row.update(f)
                            row["fraction_of_floor"] = f["floor_ms"] / value if value else None
                    if p.name == BASELINE:
                        base_value = value
                    row["ratio"] = value / base_value if base_value else None
                except Exception as e:
                    row["status"] = f"error: {type(e).__name__}: {e}"[:200]
                finally:
                    set_trainable(model, "fwdbwd", case.layers)
            rows.append(row)
            if progress is not None:
                progress.finish()
    return rows

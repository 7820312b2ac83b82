"""Modes frozen_gates and frozen_units: what partial freezing saves in the backward.

For each frozen fraction of a layer's gate rows the backward is timed (forward untimed,
input needing no gradient, as in a fine-tune's lowest layer) against the same provider
with nothing frozen, and so are the weight-gradient products alone (dW_ih, dW_hh and
the biases through backends.gradients, the part that freezing can shrink: the
recurrent chain still runs through frozen units, docs/usage.md). nn.LSTM cannot
freeze rows: its row is the fully trainable backward, for scale.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .cases import Case
from .providers import BASELINE

# frozen_gates: (frozen fraction of the rows, the gates frozen); frozen_units: fractions.
GATE_STEPS = ((0.0, ""), (0.25, "i"), (0.5, "if"), (0.75, "ifg"))
UNIT_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 0.9)
SCALING_MODES = ("frozen_gates", "frozen_units")
DW_PROVIDER = "weight-gradient products"


def settings(mode: str, hidden: int) -> list[tuple[float, Optional[dict]]]:
    """(frozen fraction of the gate rows, rnnfast.freeze selector or None) per step of a
    mode: whole gates (quarters only), or the first units of every gate."""
    if mode == "frozen_gates":
        return [(fraction, dict(gates=gates) if gates else None) for fraction, gates in GATE_STEPS]
    steps = []
    for fraction in UNIT_FRACTIONS:
        units = round(fraction * hidden)
        steps.append((units / hidden, dict(units=range(units)) if units else None))
    return steps


def _freeze(model: nn.Module, selector: Optional[dict]) -> None:
    import rnnfast
    rnnfast.unfreeze(model)
    if selector:
        rnnfast.freeze(model, **selector)


def _weight_grad_step(model: nn.Module, case: Case, device: torch.device):
    """A timed callable running layer 0's weight and bias gradient products, from gate
    gradients of the case's shape, with the model's current masks."""
    from rnnfast.backends import gradients
    from rnnfast.backends.steps import accumulation_dtype, make_steps
    from rnnfast.freeze import frozen_mask

    dtype = case.torch_dtype
    g = torch.Generator(device="cpu").manual_seed(2)
    rows = case.T * case.B
    dgates = torch.randn(rows, 4 * case.H, generator=g).to(device, accumulation_dtype(dtype))
    x = torch.randn(rows, case.I, generator=g).to(device, dtype)
    y = torch.randn(rows, case.H, generator=g).to(device, dtype)
    h0 = torch.zeros(case.B, case.H, device=device, dtype=dtype)
    zeros = dgates.new_zeros(0)
    steps = make_steps((case.T, case.B, case.I), None, False)
    masks = [frozen_mask(model, f"{name}_l0") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    needs = [False, False, False, True, True, True, True, False]

    def timed():
        gradients.parameter_and_input_grads(dgates, zeros, zeros, None, x, h0, None, y, None, steps,
                                            needs, [*masks, None], (case.T, case.B, case.I), dtype)
    return timed


def run_count(mode: str, hidden: int, providers) -> int:
    """How many rows (progress steps) run_scaling makes for these providers."""
    steps = len(settings(mode, hidden))
    ours = sum(1 for p in providers if p.name.startswith("rnnfast/") and p.skip is None)
    return (len(providers) - ours) + ours * steps + (steps if ours else 0)


def run_scaling(case: Case, mode: str, built: dict, device: torch.device, repeats: int,
                warmup: int, xs, gouts, base_row: dict, progress=None) -> list[dict]:
    """Rows of one scaling mode: per provider and frozen fraction the backward's time and
    its ratio to the same provider with nothing frozen; then the weight-gradient
    products alone. built: provider name -> (model or None, status, max_rel_diff)."""
    import rnnfast
    from .runner import make_step, summarize, time_step

    steps = settings(mode, case.H)
    ours = [name for name, (model, _, _) in built.items() if isinstance(model, rnnfast.LSTM)]
    rows = []

    def timed_rows(provider, model, timed_for, extra):
        """One row per frozen fraction, each timed with timed_for() after freezing."""
        first = None
        for fraction, selector in (steps if model is not None else steps[:1]):
            if progress is not None:
                progress.start(f"{case.name} {mode} {provider} {fraction:.0%} frozen")
            if model is not None:
                _freeze(model, selector)
            row = {**base_row, "provider": provider, **extra, "frozen": fraction}
            try:
                timing = summarize(time_step(*timed_for(), device, repeats, warmup))
                first = first or timing["median_ms"]
                row.update(timing, ratio=timing["median_ms"] / first)
            except Exception as e:  # reported in its row; the run goes on
                row["status"] = f"error: {type(e).__name__}: {e}"[:200]
            finally:
                if model is not None:
                    _freeze(model, None)
            rows.append(row)
            if progress is not None:
                progress.finish()

    for name, (model, status, diff) in built.items():
        extra = {"status": status, "max_rel_diff": diff}
        if name in ours:
            timed_rows(name, model, lambda m=model: make_step(m, mode, xs, gouts, device), extra)
        elif name == BASELINE and model is not None:  # nn.LSTM: fully trainable, for scale
            timed_rows(name, None, lambda m=model: make_step(m, mode, xs, gouts, device), extra)
        else:
            if model is not None:
                extra["status"] = ("unsupported mode: it has no partial freezing (it would "
                                   "compute every gradient)")
            rows.append({**base_row, "provider": name, **extra})
            if progress is not None:
                progress.start(f"{case.name} {mode} {name}")
                progress.finish()
    if ours:
        # The products are the same code whatever backend ran the recurrence: timed once,
        # on the first rnnfast model's masks.
        model = built[ours[0]][0]
        timed_rows(DW_PROVIDER, model, lambda: (lambda: None, _weight_grad_step(model, case, device)),
                   {"status": "ok", "max_rel_diff": None})
    return rows

"""Smoke cases: every backend, in fp32/bf16/fp16, on a handful of shapes that each
stress one thing (odd H, B=1, packed, bidirectional, projection, T=1, a layer wide
enough for many blocks, freeze masks), against torch.nn.LSTM (cuDNN on a GPU).

One case = one backend x dtype x shape. The check runs the same weights and inputs
three ways: nn.LSTM in float64 (the exact answer), nn.LSTM in the dtype (cuDNN: the
reference's own error, the largest over its run and BASELINE_ORDERS runs with the
hidden units and outputs relabelled) and rnnfast.LSTM with the backend in the dtype;
outputs, final states and every gradient must keep the DESIGN.md §6 rule
(rnnfast.precision). TF32 is off for the whole check, so fp32 is judged at full fp32
precision.

Runs inside a worker process (rnnfast.verify.worker), never in the verify process.
"""
from __future__ import annotations

import contextlib
import re
import traceback
import warnings
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
from rnnfast import backends, precision
from rnnfast.backends.barrier import raise_if_barrier_timed_out
from rnnfast.bench.cases import DTYPES
from rnnfast.freeze import frozen_mask


@dataclass(frozen=True)
class Shape:
    name: str
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    proj: int = 0
    lengths: tuple[int, ...] = ()  # packed, unsorted, when given
    masks: bool = False            # partly frozen layers (gates, elements) and a frozen bias

    def as_dict(self) -> dict:
        return {**asdict(self), "lengths": list(self.lengths)}

    @classmethod
    def from_dict(cls, d: dict) -> "Shape":
        return cls(**{**d, "lengths": tuple(d["lengths"])})


SHAPES = (
    Shape("odd-H", T=9, B=3, I=13, H=37, layers=2),
    Shape("B=1", T=12, B=1, I=8, H=32),
    Shape("packed", T=9, B=4, I=13, H=20, layers=2, lengths=(5, 9, 2, 7)),
    Shape("bidirectional", T=8, B=3, I=11, H=24, layers=2, bidirectional=True),
    Shape("proj", T=8, B=3, I=11, H=32, layers=2, proj=12),
    Shape("T=1", T=1, B=5, I=7, H=16),
    Shape("H=600", T=20, B=8, I=64, H=600),  # many blocks meet at each step's barrier
    # FlashRNN's layer: on an H100/H200 the 16-bit CUDA forward is a cluster plan holding
    # W_hh partly in registers, the backward (and fp32's forward) a grid in clusters
    # with multicast staging, the 16-bit backward's blocks holding W_hh^T partly in
    # registers
    Shape("flashrnn", T=6, B=16, I=32, H=768),
    Shape("masks", T=7, B=3, I=13, H=20, layers=2, masks=True),
)
# On a CPU (the dry run), in Triton's interpreter: a few tiny shapes.
DRY_RUN_SHAPES = ("T=1", "packed", "masks")
# Under compute-sanitizer: every kernel path (forward and reverse, packed, with and
# without projection) on the smallest sizes, since the tools slow kernels down 10-100x.
# H = 22: the CUDA cluster plans' exchange at its edges (bf16: a last slice of 2 units
# sent as a 4-unit word into the k-padding, and the backward's 4-byte words, its gates
# 44 bytes apart).
SANITIZE_SHAPES = (
    Shape("tiny", T=5, B=3, I=5, H=22, bidirectional=True, lengths=(5, 2, 4)),
    Shape("tiny-proj", T=5, B=3, I=5, H=20, proj=7),
)
# And, for the CUDA kernels alone, (dtype, shape) pairs that an H100/H200 plans in forms
# no tiny shape is planned as: FlashRNN's layer in bf16 (the forward as a register
# cluster plan: fragments loaded once, their partial sums; the backward as a multicast
# grid: bulk copies into the CTAs of a cluster, mbarrier waits, with W_hh^T partly in
# registers), H = 256 in bf16 (the backward as a register cluster plan) and H = 320 in
# fp32 (the backward as a reduce split: a cluster barrier a step, then each CTA's loads
# of its peers' partial sums).
SANITIZE_CUDA_SHAPES = (("bf16", Shape("flashrnn", T=3, B=16, I=8, H=768)),
                        ("bf16", Shape("H=256", T=3, B=3, I=8, H=256)),
                        ("fp32", Shape("H=320", T=3, B=3, I=8, H=320)))

FALLBACK_WARNING = re.compile(r"using the \w+ backend")


def _config(shape: Shape) -> dict:
    return dict(input_size=shape.I, hidden_size=shape.H, num_layers=shape.layers,
                bidirectional=shape.bidirectional, proj_size=shape.proj)


def _freeze(model: rnnfast.LSTM, shape: Shape) -> None:
    """Partly frozen layer 0 (input and forget gates), random elements of layer 1's
    W_hh, and all of bias_ih_l1 (which then no longer requires grad)."""
    g = torch.Generator().manual_seed(5)
    elements = (torch.rand(4 * shape.H, shape.proj or shape.H, generator=g) < 0.5).to(model.weight_hh_l1.device)
    rnnfast.freeze(model, layers=[0], gates="if")
    rnnfast.freeze(model, mask={"weight_hh_l1": elements})
    rnnfast.freeze(model, params=["bias_ih_l1"])


def _inputs(shape: Shape, device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The input x [T, B, I] and random upstream gradients for the output (packed
    data [N, D*P] or dense [T, B, D*P]), h_n [L*D, B, P] and c_n [L*D, B, H], in float64."""
    g = torch.Generator().manual_seed(1)
    directions, out = 1 + shape.bidirectional, shape.proj or shape.H
    rows = (sum(shape.lengths),) if shape.lengths else (shape.T, shape.B)
    shapes = [(shape.T, shape.B, shape.I), (*rows, directions * out),
              (shape.layers * directions, shape.B, out), (shape.layers * directions, shape.B, shape.H)]
    x, *upstream = [torch.randn(s, generator=g, dtype=torch.float64).to(device) for s in shapes]
    return x, upstream


def _outputs_and_grads(model: nn.Module, shape: Shape, x64: torch.Tensor, names: list[str],
                       upstream: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """Output (packed data or dense), h_n, c_n, then the gradients of x and of the
    parameters `names`, for fixed upstream gradients."""
    x = x64.detach().to(dtype).requires_grad_()
    out, (h, c) = model(pack_padded_sequence(x, list(shape.lengths), enforce_sorted=False)
                        if shape.lengths else x)
    data = out.data if shape.lengths else out
    params = dict(model.named_parameters())
    grads = torch.autograd.grad([data, h, c], [x, *(params[n] for n in names)],
                                [u.to(dtype) for u in upstream])
    return [t.detach() for t in (data, h, c, *grads)]


# The baseline's own error in a dtype: the largest over its run and its runs with every
# layer's hidden units (and a projection's outputs) relabelled in BASELINE_ORDERS more
# (seeded) orders, as the tests take the reference's (tests/helpers.py,
# REFERENCE_ORDERS). One order's largest error over a few hundred values is one draw:
# summation orders alone moved it by up to 7x on a small fp32 layer with a projection
# (csrc/README.md, "The kernels on a CPU").
BASELINE_ORDERS = 3


class _Relabelling:
    """nn.LSTM's parameters, inputs and results with layer l, direction d's hidden units in
    the order units[l][d] (new unit j is unit units[l][d][j]) and its output columns in
    the order outputs[l][d] (with a projection a permutation of its own, else the units'):
    the same layers, every sum over units or outputs in another order."""

    def __init__(self, shape: Shape, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.shape, self.directions = shape, 1 + shape.bidirectional
        self.units = [[torch.randperm(shape.H, generator=g) for _ in range(self.directions)]
                      for _ in range(shape.layers)]
        self.outputs = [[torch.randperm(shape.proj, generator=g) if shape.proj else units
                         for units in layer] for layer in self.units]

    def _columns(self, layer: int) -> torch.Tensor:
        """Columns of layer `layer`'s output (both directions' side by side), in the new order."""
        width = self.shape.proj or self.shape.H
        return torch.cat([d * width + p for d, p in enumerate(self.outputs[layer])])

    def _index(self, name: str):
        """(rows, cols) picking parameter `name`'s entries in the new order (None: as is)."""
        kind, layer, reverse = re.fullmatch(r"(\w+?)_l(\d+)(_reverse)?", name).groups()
        layer, direction = int(layer), int(reverse is not None)
        units, outputs = self.units[layer][direction], self.outputs[layer][direction]
        gate_rows = torch.cat([g * self.shape.H + units for g in range(4)])
        return {"weight_ih": (gate_rows, self._columns(layer - 1) if layer else None),
                "weight_hh": (gate_rows, outputs),
                "bias_ih": (gate_rows, None), "bias_hh": (gate_rows, None),
                "weight_hr": (outputs, units)}[kind]

    @staticmethod
    def _take(t: torch.Tensor, rows, cols) -> torch.Tensor:
        t = t if rows is None else t.index_select(0, rows.to(t.device))
        return t if cols is None else t.index_select(-1, cols.to(t.device))

    @staticmethod
    def _states(t: torch.Tensor, orders: list, back: bool) -> torch.Tensor:
        """h_n or c_n [L*D, B, *]: each layer and direction's columns in `orders` (outputs
        for h_n, units for c_n), reordered, or put back."""
        perms = [p.argsort() if back else p for layer in orders for p in layer]
        return torch.stack([s.index_select(-1, p.to(t.device)) for s, p in zip(t, perms)])

    def run(self, model: nn.Module, exact_state: dict, x64: torch.Tensor, names: list[str],
            upstream: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
        """_outputs_and_grads of `model` loaded with exact_state in the new order, its
        results put back in the original one."""
        model.load_state_dict({n: self._take(t, *self._index(n)) for n, t in exact_state.items()})
        out_cols = self._columns(self.shape.layers - 1)
        dy, dh_n, dc_n = upstream
        upstream = [self._take(dy, None, out_cols), self._states(dh_n, self.outputs, False),
                    self._states(dc_n, self.units, False)]
        data, h, c, dx, *grads = _outputs_and_grads(model, self.shape, x64, names, upstream, dtype)
        restored = []
        for name, grad in zip(names, grads):
            rows, cols = self._index(name)
            restored.append(self._take(grad, None if rows is None else rows.argsort(),
                                       None if cols is None else cols.argsort()))
        return [self._take(data, None, out_cols.argsort()), self._states(h, self.outputs, True),
                self._states(c, self.units, True), dx, *restored]


@contextlib.contextmanager
def tf32(allowed: bool):
    """TF32 allowed or not for cuBLAS and cuDNN inside the block. cuDNN's flag goes
    through its flags() context: after torch.testing's disable_global_flags() (pytest
    runs import it) setting it directly raises."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = allowed
    try:
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                         deterministic=cudnn.deterministic, allow_tf32=allowed):
            yield
    finally:
        matmul.allow_tf32 = before


def check(backend: str, dtype_name: str, shape: Shape, device: torch.device) -> dict:
    """Runs one case, TF32 off; returns its result: status PASS, FAIL or FALLBACK (the
    backend handed the call to another one, which was then checked), the worst tensor's
    error over what the rule allows ("worst", <= 1 passes) and what broke the rule."""
    with tf32(False):
        return _check(backend, DTYPES[dtype_name], shape, device)


@contextlib.contextmanager
def _watched(fallbacks: list[str]):
    """rnnfast's run of a case: the fallbacks it announced go into `fallbacks` (each case
    hears its own, though they are announced once per process), and a barrier wait that
    gave up raises, failing the case."""
    backends.forget_announced_fallbacks()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        raise_if_barrier_timed_out(wait=True)
    fallbacks += sorted({str(w.message) for w in caught if FALLBACK_WARNING.search(str(w.message))})


def _check(backend: str, dtype: torch.dtype, shape: Shape, device: torch.device) -> dict:
    torch.manual_seed(0)
    exact = nn.LSTM(**_config(shape), device=device, dtype=torch.float64)
    theirs = nn.LSTM(**_config(shape), device=device, dtype=dtype)  # weights: baseline_runs
    fallbacks: list[str] = []
    with _watched(fallbacks):
        ours = rnnfast.LSTM(**_config(shape), device=device, dtype=dtype, backend=backend)
        ours.load_state_dict(exact.state_dict())
        if shape.masks:
            _freeze(ours, shape)
        names = [n for n, p in ours.named_parameters() if p.requires_grad]
        x64, upstream = _inputs(shape, device)
        expected = _outputs_and_grads(exact, shape, x64, names, upstream, torch.float64)
        got = _outputs_and_grads(ours, shape, x64, names, upstream, dtype)
    def baseline_runs() -> list[list[torch.Tensor]]:  # in its own order, then relabelled
        theirs.load_state_dict(exact.state_dict())
        runs = [_outputs_and_grads(theirs, shape, x64, names, upstream, dtype)]
        for order in range(BASELINE_ORDERS):
            runs.append(_Relabelling(shape, 1000 + order).run(theirs, exact.state_dict(), x64, names,
                                                              upstream, dtype))
        return runs

    baseline = "cuDNN" if device.type == "cuda" else "native"
    try:
        baselines = baseline_runs()
    except RuntimeError as error:  # a dtype cuDNN refuses: torch's own kernels instead
        baseline = f"native (cuDNN refused: {(str(error).splitlines() or [type(error).__name__])[0][:80]})"
        with torch.backends.cudnn.flags(enabled=False):
            baselines = baseline_runs()

    # A second peer, reported beside the verdict: the reference backend, whose recurrent
    # product keeps its fp32 sums as the fused kernels do, where cuDNN may round them to
    # the dtype. Two rounding patterns move the largest of a few hundred errors by up to
    # 2x (csrc/README.md, "The kernels on a CPU"): a narrow FAIL against cuDNN that passes
    # against it is that, not a kernel's fault.
    peer = None
    if backend != "reference":
        peer_model = rnnfast.LSTM(**_config(shape), device=device, dtype=dtype, backend="reference")
        peer_model.load_state_dict(exact.state_dict())
        peer = _outputs_and_grads(peer_model, shape, x64, names, upstream, dtype)

    tensor_names = ["output", "h_n", "c_n", "d_input", *(f"d_{n}" for n in names)]
    broken = []
    for k, name in enumerate(names):
        mask = frozen_mask(ours, name)
        if mask is None:
            continue
        slot = 4 + k
        if torch.any(got[slot][mask] != 0):
            broken.append(f"{tensor_names[slot]}: frozen entries have nonzero gradients")
        for results in (expected, *baselines, peer):
            if results is not None:
                results[slot] = results[slot].masked_fill(mask, 0)
    ours_err = precision.max_errors(got, expected)
    theirs_err = [max(errors) for errors in zip(*(precision.max_errors(b, expected) for b in baselines))]
    scales = precision.magnitudes(expected)
    broken += precision.rule_violations(ours_err, theirs_err, dtype, scales, tensor_names)

    def worst(peer_err):  # the worst tensor's error over what the rule allows against a peer
        return round(precision.allowance_used(ours_err, peer_err, dtype, scales), 4)

    status = "FAIL" if broken else "FALLBACK" if fallbacks else "PASS"
    return {"status": status, "worst": worst(theirs_err), "violations": broken, "fallback": fallbacks,
            "baseline": baseline,
            "worst_vs_reference": worst(precision.max_errors(peer, expected)) if peer else None}


def exercise(backend: str, dtype_name: str, shape: Shape, device: torch.device) -> dict:
    """Forward and backward of rnnfast alone, for a sanitizer to watch (no cuDNN run
    beside it, whose kernels would only slow the tool down and blur its report)."""
    torch.manual_seed(0)
    dtype = DTYPES[dtype_name]
    fallbacks: list[str] = []  # a layer run elsewhere: not what the tool was to watch
    with _watched(fallbacks):
        model = rnnfast.LSTM(**_config(shape), device=device, dtype=dtype, backend=backend)
        x64, upstream = _inputs(shape, device)
        names = [n for n, _ in model.named_parameters()]
        outs = _outputs_and_grads(model, shape, x64, names, upstream, dtype)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finite = all(torch.isfinite(t).all() for t in outs)
    return {"status": "FAIL" if not finite else "FALLBACK" if fallbacks else "PASS",
            "violations": [] if finite else ["non-finite outputs or gradients"], "fallback": fallbacks}


def failure(error: BaseException) -> dict:
    """The result of a case that raised."""
    return {"status": "FAIL", "error": f"{type(error).__name__}: {str(error)[:500]}",
            "traceback": traceback.format_exc()[-3000:]}

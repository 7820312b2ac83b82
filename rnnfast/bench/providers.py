"""Every implementation the suite times, and why one cannot run here.

A provider builds, from a reference torch.nn.LSTM, a module with nn.LSTM's call
signature (x [T, B, I] -> out [T, B, H], (h_n, c_n) [L, B, H]) and parameter names,
holding a copy of the same weights. A provider that cannot run on this device/dtype
stays in the list with its reason: the report shows it, nothing is silently dropped.
"""
from __future__ import annotations

import copy
import importlib.util
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

BASELINE = "torch"  # torch.nn.LSTM: cuDNN on CUDA, oneDNN / native on CPU
KNOWN_PROVIDERS = ("torch", "rnnfast/reference", "rnnfast/triton", "rnnfast/cuda", "rnnfast/cpu",
                   "steploop", "steploop+compile", "flashrnn")


@dataclass
class Provider:
    name: str
    build: Callable[[nn.LSTM], nn.Module]
    # None: runs and is timed. Otherwise why not (shown in the report as its status).
    skip: Optional[str] = None
    description: str = ""
    # Modes it cannot run (mode -> reason), e.g. FlashRNN has no multi-layer freezing.
    unsupported_modes: Optional[dict] = None


def baseline_label(device: torch.device) -> str:
    return "nn.LSTM (cuDNN)" if device.type == "cuda" else "nn.LSTM (CPU native)"


# -- plain PyTorch step loop -----------------------------------------------------------

def _lstm_cell(xw_t, h, c, w_hh):
    # xw_t [B, 4H] (input projection + both biases), h, c [B, H], w_hh [4H, H]
    gates = xw_t + h @ w_hh.t()
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class StepLoopLSTM(nn.Module):
    """What people write by hand: one GEMM for the input projection of a layer, then a
    Python loop over time steps. Under torch.compile only the cell is compiled:
    compiling the whole loop would unroll T steps into the graph (minutes of compile
    time at T=1024), which is not how anyone runs it."""

    def __init__(self, ref: nn.LSTM, compiled: bool = False):
        super().__init__()
        if ref.bidirectional or ref.proj_size or ref.batch_first or not ref.bias:
            raise ValueError("StepLoopLSTM covers the benchmark's unidirectional, biased, "
                             "time-major LSTMs only")
        self.num_layers, self.hidden_size = ref.num_layers, ref.hidden_size
        for name, p in ref.named_parameters():
            self.register_parameter(name, nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
        self.cell = torch.compile(_lstm_cell) if compiled else _lstm_cell

    def forward(self, x):
        # x [T, B, I] -> out [T, B, H], (h_n, c_n) [L, B, H]
        T, B, _ = x.shape
        hs, cs = [], []
        for layer in range(self.num_layers):
            w_ih, w_hh = getattr(self, f"weight_ih_l{layer}"), getattr(self, f"weight_hh_l{layer}")
            bias = getattr(self, f"bias_ih_l{layer}") + getattr(self, f"bias_hh_l{layer}")
            xw = torch.addmm(bias, x.reshape(T * B, -1), w_ih.t()).view(T, B, -1)  # [T, B, 4H]
            h = x.new_zeros(B, self.hidden_size)
            c = x.new_zeros(B, self.hidden_size)
            outs = []
            for t in range(T):
                h, c = self.cell(xw[t], h, c, w_hh)
                outs.append(h)
            x = torch.stack(outs)
            hs.append(h)
            cs.append(c)
        return x, (torch.stack(hs), torch.stack(cs))


# -- FlashRNN ---------------------------------------------------------------------------

class FlashRNNLSTM(nn.Module):
    """FlashRNN's fused LSTM kernel (backend "cuda_fused") on nn.LSTM's weights: the
    input projection is a GEMM here, as in FlashRNN's own benchmarks (they take Wx as
    input). Single layer only. Written against flashrnn 1.0.x's functional API
    flashrnn(Wx [B, T, G, NH, D], R [G, NH, D, D], b [G, NH, D]) and NOT run yet (no
    GPU in the session that wrote it): the correctness check against nn.LSTM is what
    decides whether its timings are reported."""

    def __init__(self, ref: nn.LSTM):
        super().__init__()
        if ref.num_layers != 1:
            raise ValueError("the FlashRNN provider runs single-layer cases only")
        from flashrnn.flashrnn import flashrnn  # noqa: F401  (fail here, not mid-timing)
        for name, p in ref.named_parameters():
            self.register_parameter(name, nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
        self.hidden_size = ref.hidden_size

    def forward(self, x):
        from flashrnn.flashrnn import flashrnn
        T, B, _ = x.shape
        H = self.hidden_size
        wx = torch.addmm(self.bias_ih_l0, x.reshape(T * B, -1), self.weight_ih_l0.t())
        wx = wx.view(T, B, 4, 1, H).transpose(0, 1)                        # [B, T, 4, 1, H]
        r = self.weight_hh_l0.view(4, H, H).transpose(1, 2).unsqueeze(1)   # [4, 1, H_in, H_out]
        b = self.bias_hh_l0.view(4, 1, H)                                  # [4, 1, H]
        dtype = {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(x.dtype, "float32")
        h, last = flashrnn(wx.contiguous(), r.contiguous(), b.contiguous(), function="lstm",
                           backend="cuda_fused", dtype=dtype)
        # h [S=2 states (h, c), B, T, NH, D]; last [S, B, 1, NH, D]
        out = h[0].reshape(B, T, H).transpose(0, 1)
        return out, (last[0].reshape(1, B, H), last[1].reshape(1, B, H))


# -- the list ---------------------------------------------------------------------------

def _rnnfast_builder(backend: str):
    def build(ref):
        import rnnfast
        return rnnfast.LSTM.from_torch(ref, backend=backend)
    return build


def _flashrnn_skip(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    if importlib.util.find_spec("flashrnn") is None:
        return "not installed (pip install flashrnn; it JIT-builds its CUDA kernels)"
    if device.type != "cuda":
        return f"its kernels run on CUDA only, this run is on {device.type}"
    if dtype == torch.float64:
        return "no fp64 kernels"
    return None


def all_providers(device: torch.device, dtype: torch.dtype) -> list[Provider]:
    """Every known provider, each usable (skip None) or with the reason it is not."""
    from rnnfast import backends

    out = [Provider(BASELINE, copy.deepcopy, description=baseline_label(device))]
    status = backends.available_backends()
    for name in backends.KNOWN_BACKENDS:
        reason = status[name]
        if reason is None:
            reason = backends.get(name).unsupported_reason(device, dtype)
            if reason is not None:
                reason = f"unsupported here: {reason}"
        else:
            reason = f"unavailable: {reason}"
        if reason is None and name == "triton" and device.type == "cpu":
            # Triton's CPU interpreter runs the kernels one program at a time in Python:
            # correct, and checked, but its speed means nothing.
            reason = "interpreter, not timed" if os.environ.get("TRITON_INTERPRET") == "1" else reason
        out.append(Provider(f"rnnfast/{name}", _rnnfast_builder(name), reason,
                            description=backends._REGISTRY[name].description
                            if name in backends._REGISTRY else ""))
    out.append(Provider("steploop", lambda ref: StepLoopLSTM(ref),
                        description="plain PyTorch step loop, eager"))
    compile_skip = None
    if device.type == "cpu" and dtype == torch.float16:
        compile_skip = "torch.compile's CPU backend has no fp16 support worth timing"
    out.append(Provider("steploop+compile", lambda ref: StepLoopLSTM(ref, compiled=True), compile_skip,
                        description="plain PyTorch step loop, cell under torch.compile"))
    multi = "the FlashRNN provider is single-layer only"
    out.append(Provider("flashrnn", FlashRNNLSTM, _flashrnn_skip(device, dtype),
                        description="FlashRNN fused kernel (cuda_fused)",
                        unsupported_modes={"frozen_layers": multi}))
    assert tuple(p.name for p in out) == KNOWN_PROVIDERS
    return out


def select(providers: list[Provider], names=None) -> list[Provider]:
    """The providers asked for (all by default), the baseline always first."""
    if not names:
        return providers
    unknown = [n for n in names if n not in KNOWN_PROVIDERS]
    if unknown:
        raise ValueError(f"unknown provider {unknown[0]!r}; expected some of {', '.join(KNOWN_PROVIDERS)}")
    wanted = {BASELINE, *names}
    return [p for p in providers if p.name in wanted]

"""Benchmark cases: the standard cases of DESIGN.md §8 and CPU-sized counterparts.

A case is one LSTM shape and dtype with the modes worth timing for it. The GPU suite
is the one the speed claims rest on; the CPU suite keeps the same structure at sizes
that finish in a few minutes on two cores, so CI and laptops exercise every code path.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}

# mode -> what one timed iteration is. Frozen modes time a whole training step
# (forward + backward), because what freezing saves shows up in both: frozen lower
# layers run without a graph, bias-only skips every weight-gradient GEMM.
MODES = {
    "fwd": "inference forward (torch.no_grad)",
    "fwdbwd": "training forward + backward",
    "bwd": "backward only (forward run untimed before each repeat)",
    "frozen_layers": "forward + backward, all layers but the top one frozen, input needs no grad",
    "bias_only": "forward + backward, only the biases train, input needs no grad",
    "frozen_gates": "backward only (input needs no grad) with 0-3 of the 4 gates frozen in every "
                    "layer, against the same provider with nothing frozen; and the weight-gradient "
                    "products alone",
    "frozen_units": "as frozen_gates, with 0/25/50/75/90% of the hidden units frozen",
    "memory": "peak memory of a training step (CUDA: max_memory_allocated; CPU: saved-tensor bytes)",
}
TIME_MODES = tuple(m for m in MODES if m != "memory")


@dataclass(frozen=True)
class Case:
    group: str   # which standard case it belongs to: fastrnns, flashrnn-dense, sweep, finetune, custom
    T: int       # sequence length
    B: int       # batch
    I: int       # input size of layer 0
    H: int       # hidden size
    layers: int
    dtype: str   # key of DTYPES
    modes: tuple[str, ...] = field(default=("fwd", "fwdbwd"))

    @property
    def name(self) -> str:
        size = f"I=H={self.H}" if self.I == self.H else f"I={self.I} H={self.H}"
        layers = f" L={self.layers}" if self.layers > 1 else ""
        return f"{self.group} T={self.T} B={self.B} {size}{layers} {self.dtype}"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def as_dict(self) -> dict:
        d = asdict(self)
        d["name"] = self.name
        d["modes"] = list(self.modes)
        return d


def check_modes(modes, layers: int) -> None:
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode {unknown[0]!r}; expected some of {', '.join(MODES)}")
    if "frozen_layers" in modes and layers < 2:
        raise ValueError("mode 'frozen_layers' freezes all layers below the top one, so it needs "
                         f"--layers >= 2, got {layers}")


SINGLE_LAYER_MODES = ("fwd", "fwdbwd", "bwd", "memory")
# The classic size also shows what freezing gate rows saves (frozen.py).
FASTRNNS_MODES = SINGLE_LAYER_MODES + ("frozen_gates", "frozen_units")
FINETUNE_MODES = ("fwdbwd", "frozen_layers", "bias_only", "memory")
SWEEP_MODES = ("fwd", "fwdbwd")
GROUPS = ("fastrnns", "flashrnn-dense", "sweep", "finetune")


def standard_cases(device: torch.device, dtypes=None, groups=None) -> list[Case]:
    """The standard suite for a device type. GPU: DESIGN.md §8 exactly, in fp32, bf16
    and fp16. CPU: the same four groups scaled down (fp32 by default)."""
    groups = tuple(groups or GROUPS)
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        raise ValueError(f"unknown case group {bad[0]!r}; expected some of {', '.join(GROUPS)}")
    gpu = device.type == "cuda"
    dtypes = tuple(dtypes or (("fp32", "bf16", "fp16") if gpu else ("fp32",)))
    cases = []
    for dt in dtypes:
        if gpu:
            shapes = {
                # PyTorch's fastrnns default.
                "fastrnns": [(100, 64, 512, 512, 1, FASTRNNS_MODES)],
                # FlashRNN's dense case (their paper: cuDNN fp16 2.01 / 5.19 ms on an H100).
                "flashrnn-dense": [(1024, 16, 768, 768, 1, SINGLE_LAYER_MODES)],
                "sweep": [(T, B, H, H, 1, SWEEP_MODES)
                          for T in (256, 1024) for H in (256, 512, 1024) for B in (1, 8, 32, 128, 256)],
                # AWD-LSTM-sized fine-tune: embedding 400, 3 layers of 1152.
                "finetune": [(70, 64, 400, 1152, 3, FINETUNE_MODES)],
            }
        else:
            shapes = {
                "fastrnns": [(50, 32, 256, 256, 1, FASTRNNS_MODES)],
                "flashrnn-dense": [(256, 4, 128, 128, 1, SINGLE_LAYER_MODES)],
                "sweep": [(T, B, H, H, 1, SWEEP_MODES)
                          for T in (32, 128) for H in (64, 256) for B in (1, 8, 32)],
                "finetune": [(35, 16, 100, 256, 3, FINETUNE_MODES)],
            }
        for g in groups:
            for T, B, I, H, L, modes in shapes[g]:
                cases.append(Case(g, T, B, I, H, L, dt, modes))
    return cases


def custom_case(T: int, B: int, H: int, I: int, layers: int, dtype: str, modes) -> Case:
    """A user's own shape (python -m rnnfast bench --batch ... --hidden ... --seq ...)."""
    for label, value in (("--seq", T), ("--batch", B), ("--hidden", H), ("--input", I), ("--layers", layers)):
        if value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value}")
    check_modes(modes, layers)
    return Case("custom", T, B, I, H, layers, dtype, tuple(modes))

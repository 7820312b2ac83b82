"""LoRA adapters for the recurrent weights of rnnfast.LSTM (PEFT cannot target nn.LSTM).

add_lora gives each chosen weight W [4H, in] (weight_ih and/or weight_hh of the chosen
layers) two trainable factors, A [r, in] and B [4H, r], and the layer runs with
W + (alpha / r) * B @ A. B starts at zero, so the model computes exactly what it did,
and the base is frozen: its weights stop requiring grad, so the backward runs no
weight-gradient GEMM for them. The factors' gradients come straight from the gate
gradients (dB = s * dgates^T (x A^T), dA = s * (dgates B)^T x), products of width r,
never a [4H, in] dW (rnnfast/autograd.py).

    lstm = transfer.add_lora(model.encoder.lstm, rank=8, alpha=16)  # base frozen
    ...train...
    transfer.merge_lora(lstm)        # fold B @ A into W: plain-speed inference
    transfer.unmerge_lora(lstm)      # and back, to keep training the adapters
    transfer.remove_lora(lstm)       # merge, then drop the factors: a plain rnnfast.LSTM

The factors are parameters named lora_A_<weight> / lora_B_<weight> (so they are in the
state_dict and the optimizer's parameters).
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
from torch import nn

from ..freeze import freeze as _freeze_fn
from ..modules import LSTM

TARGETS = ("weight_ih", "weight_hh")


def _check_lstm(lstm, what: str) -> None:
    if not isinstance(lstm, LSTM):
        raise TypeError(f"{what} needs an rnnfast.LSTM (convert an nn.LSTM with "
                        f"rnnfast.LSTM.from_torch or rnnfast.convert), got {type(lstm).__name__}")


def add_lora(lstm: LSTM, rank: int = 8, alpha: Optional[float] = None, *,
             targets: Iterable[str] = TARGETS, layers: Optional[Iterable[int]] = None,
             freeze_base: bool = True, generator: Optional[torch.Generator] = None) -> LSTM:
    """Adds LoRA factors of `rank` to the `targets` weights of `layers` (default: all,
    both directions); scale alpha / rank (alpha defaults to rank: scale 1).
    freeze_base freezes every original parameter of the LSTM (weights, biases and
    projection), as in LoRA; pass False to train some of them alongside. Returns lstm."""
    _check_lstm(lstm, "add_lora")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive int, got {rank!r}")
    targets = [targets] if isinstance(targets, str) else list(targets)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise ValueError(f"LoRA targets must be among {TARGETS}, got {targets}")
    layer_ids = range(lstm.num_layers) if layers is None else list(layers)
    bad = [k for k in layer_ids if not 0 <= k < lstm.num_layers]
    if bad:
        raise ValueError(f"layers {bad} do not exist: the LSTM has {lstm.num_layers} layers")
    if lstm.lora_merged:
        raise RuntimeError("add_lora: the LSTM's adapters are merged; unmerge_lora first")
    if lstm.lora and lstm.lora_scale != (alpha or rank) / rank:
        raise ValueError(f"add_lora: the LSTM already has adapters with scale {lstm.lora_scale}; "
                         f"all adapters of one LSTM share one scale, got alpha / rank = "
                         f"{(alpha or rank) / rank}")
    original = [name for name, _ in lstm.named_parameters() if not name.startswith("lora_")]
    for names in lstm._all_weights:
        if _layer(names[0]) not in layer_ids:
            continue
        for weight_name in names[:2]:
            if weight_name.split("_l")[0] not in targets:
                continue
            if weight_name in lstm.lora:
                raise ValueError(f"{weight_name} already has a LoRA adapter")
            weight = getattr(lstm, weight_name)
            out_features, in_features = weight.shape
            lora_a = torch.empty(rank, in_features, dtype=weight.dtype, device=weight.device)
            # A as nn.Linear initialises its weight (kaiming-uniform, a=sqrt(5)); B = 0.
            bound = 1 / math.sqrt(in_features)
            with torch.no_grad():
                lora_a.uniform_(-bound, bound, generator=generator)
            lora_b = torch.zeros(out_features, rank, dtype=weight.dtype, device=weight.device)
            a_name, b_name = f"lora_A_{weight_name}", f"lora_B_{weight_name}"
            lstm.register_parameter(a_name, nn.Parameter(lora_a))
            lstm.register_parameter(b_name, nn.Parameter(lora_b))
            lstm.lora[weight_name] = (a_name, b_name)
    lstm.lora_scale = (alpha or rank) / rank
    if freeze_base:
        _freeze_fn(lstm, params=original)
    return lstm


def _layer(weight_name: str) -> int:
    return int(weight_name.split("_l")[1].split("_")[0])


def _delta(lstm: LSTM, weight_name: str) -> torch.Tensor:
    a_name, b_name = lstm.lora[weight_name]
    return lstm.lora_scale * (getattr(lstm, b_name) @ getattr(lstm, a_name))


def merge_lora(lstm: LSTM) -> LSTM:
    """Folds scale * B @ A into each adapted weight; the layer then runs on the plain
    weights (no per-call low-rank product). The factors stay, so unmerge_lora can undo it."""
    _check_lstm(lstm, "merge_lora")
    if not lstm.lora_merged:
        with torch.no_grad():
            for weight_name in lstm.lora:
                getattr(lstm, weight_name).add_(_delta(lstm, weight_name))
        lstm.lora_merged = True
    return lstm


def unmerge_lora(lstm: LSTM) -> LSTM:
    """Subtracts the merged update again (exact up to floating-point rounding)."""
    _check_lstm(lstm, "unmerge_lora")
    if lstm.lora_merged:
        with torch.no_grad():
            for weight_name in lstm.lora:
                getattr(lstm, weight_name).sub_(_delta(lstm, weight_name))
        lstm.lora_merged = False
    return lstm


def remove_lora(lstm: LSTM, merge: bool = True) -> LSTM:
    """Drops the adapters (after merging them in, unless merge=False): a plain
    rnnfast.LSTM whose state_dict loads into torch.nn.LSTM again."""
    _check_lstm(lstm, "remove_lora")
    if merge:
        merge_lora(lstm)
    elif lstm.lora_merged:
        unmerge_lora(lstm)
    for a_name, b_name in lstm.lora.values():
        del lstm._parameters[a_name]
        del lstm._parameters[b_name]
    lstm.lora = {}
    lstm.lora_scale = 1.0
    lstm.lora_merged = False
    return lstm


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Every LoRA factor in `module` (for an optimizer of the adapters alone)."""
    return [p for name, p in module.named_parameters() if name.rsplit(".", 1)[-1].startswith("lora_")]

"""Bias-only fine-tuning (BitFit, Ben Zaken et al., 2022) for recurrent models.

Every weight matrix is frozen, every bias stays trainable (optionally whole modules too,
usually the new task head). It trains ~1% of an LSTM's parameters, so it is a strong
choice when the target set is tiny and close to the source domain.

Why it is cheap with rnnfast: the LSTM weights stop requiring grad as whole
parameters, so the backward skips the dW_ih, dW_hh (and dW_hr) GEMMs of every layer:
it only runs the recurrent dgates chain and the db reduction (plus dx between layers,
which the biases of the lower layers need). The frozen weights are bit-identical after
any number of optimizer steps, weight decay included.
"""
from __future__ import annotations

from typing import Iterable, Optional

from torch import nn

from ..freeze import freeze as _freeze_fn


def is_bias(name: str) -> bool:
    """A bias parameter: 'bias' or 'bias_*' as the last name component (bias_ih_l0, ...)."""
    last = name.rsplit(".", 1)[-1]
    return last == "bias" or last.startswith("bias_")


def bias_only(model: nn.Module, *, trainable_modules: Optional[Iterable[str]] = None) -> nn.Module:
    """Freezes every non-bias parameter of `model`; biases (and, whole, the modules
    named in trainable_modules, e.g. ["head"]) stay trainable. Returns the model.

    Parameters already frozen stay frozen. Partial freeze masks on biases are kept.
    """
    keep = list(trainable_modules or [])
    modules = dict(model.named_modules())
    missing = [m for m in keep if m not in modules]
    if missing:
        raise KeyError(f"trainable_modules names modules the model does not have: {missing}")
    named = list(model.named_parameters())
    biases = [n for n, p in named if is_bias(n)]
    if not biases and not keep:
        raise ValueError("bias_only: the model has no bias parameter to train (an LSTM built with "
                         "bias=False?)")

    def kept(name: str) -> bool:
        return any(name.startswith(m + ".") if m else True for m in keep)

    to_freeze = [n for n, p in named if not is_bias(n) and not kept(n) and p.requires_grad]
    if to_freeze:
        _freeze_fn(model, params=to_freeze)
    return model

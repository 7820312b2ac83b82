"""Layer-wise transfer: freeze chosen parts of a whole model in one call.

`rnnfast.freeze` works on one LSTM module; a transfer model is an embedding, one or
more LSTMs and a head. `freeze_parts` finds those pieces in the model and freezes the
embedding, chosen LSTM layers, gates or units through the same freeze masks, so the
frozen parts keep every guarantee of rnnfast.freeze: no gradient work for whole frozen
parameters, no graph for wholly frozen lower layers, bit-identical values through any
torch.optim step.
"""
from __future__ import annotations

from typing import Iterable, Optional

from torch import nn

from ..freeze import freeze as _freeze_fn, unfreeze as _unfreeze_fn
from ..modules import LSTM


def find_lstms(model: nn.Module) -> dict:
    """name -> rnnfast.LSTM for every one inside `model` ("" for the model itself).
    A torch.nn.LSTM inside raises: freeze masks need rnnfast.convert(model) first."""
    found = {}
    for name, module in model.named_modules():
        if type(module) is nn.LSTM:
            raise TypeError(f"{name or 'the model'} is a torch.nn.LSTM; layer/gate/unit freezing "
                            "needs rnnfast layers: call rnnfast.convert(model) first")
        if isinstance(module, LSTM):
            found[name] = module
    return found


def find_embeddings(model: nn.Module) -> dict:
    """name -> nn.Embedding / nn.EmbeddingBag inside `model`."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}


def _pick_lstm(model: nn.Module, lstm: Optional[str]) -> LSTM:
    found = find_lstms(model)
    if lstm is not None:
        if lstm not in found:
            raise KeyError(f"no rnnfast.LSTM named {lstm!r} in the model; it has {list(found)}")
        return found[lstm]
    if not found:
        raise ValueError("the model has no rnnfast.LSTM to select layers/gates/units in")
    if len(found) > 1:
        raise ValueError(f"the model has several LSTMs {list(found)}; say which with lstm=<name>")
    return next(iter(found.values()))


def _apply(model, frozen, embedding, layers, gates, units, lstm) -> nn.Module:
    act = _freeze_fn if frozen else _unfreeze_fn
    if embedding:
        embeddings = find_embeddings(model)
        if not embeddings:
            raise ValueError("embedding=True but the model has no nn.Embedding")
        for module in embeddings.values():
            for param in module.parameters():
                param.requires_grad_(not frozen)
    if layers is not None or gates is not None or units is not None:
        target = _pick_lstm(model, lstm)
        if isinstance(layers, int):
            layers = [layers]
        act(target, layers=layers, gates=gates, units=units)
    return model


def freeze_parts(model: nn.Module, *, embedding: bool = False,
                 layers: Optional[Iterable[int]] = None, gates: Optional[str] = None,
                 units=None, lstm: Optional[str] = None) -> nn.Module:
    """Freezes parts of a transfer model; returns it.

    embedding: freeze every nn.Embedding in the model (the usual first step when the
               target set is small: its vocabulary vectors are the least transferable
               thing to re-learn from few examples).
    layers / gates / units: rnnfast.freeze selectors on the model's LSTM (gates "ifgo",
               units = hidden unit indices); gates/units without layers apply to all
               layers. lstm: the LSTM's module name when the model has several.
    """
    return _apply(model, True, embedding, layers, gates, units, lstm)


def unfreeze_parts(model: nn.Module, *, embedding: bool = False,
                   layers: Optional[Iterable[int]] = None, gates: Optional[str] = None,
                   units=None, lstm: Optional[str] = None) -> nn.Module:
    """Undoes freeze_parts for the same selectors."""
    return _apply(model, False, embedding, layers, gates, units, lstm)

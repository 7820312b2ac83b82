"""Freeze masks: selectors -> which parameter entries must not learn.

A wholly frozen parameter simply stops requiring grad, so autograd skips its gradient
(and the LSTM Function skips the GEMM that would compute it). A partly frozen one
(gates, units, elements) keeps requiring grad and carries a bool mask, True = frozen,
stored on its module as a non-persistent buffer `_frozen_mask_<name>` (it follows
.to()/.cuda() and stays out of the state_dict); the Function computes weight gradients
only over the row/column blocks that hold a trainable entry and zeroes the frozen
entries left inside them (backends/trainable.py). Because weight decay and momentum would still move entries
whose gradient is zero, a global optimizer hook puts the frozen entries back after
every `torch.optim.Optimizer.step`, bit for bit.
"""
from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from .backends import trainable

GATES = "ifgo"
_MASK_PREFIX = "_frozen_mask_"

Units = Union[int, Sequence[int], range, Tensor]


def frozen_mask(module: nn.Module, name: str) -> Optional[Tensor]:
    """The element mask (True = frozen) of a partly frozen parameter, else None."""
    return module._buffers.get(_MASK_PREFIX + name)


def freeze(module: nn.Module, *, layers: Optional[Iterable[int]] = None,
           params: Optional[Iterable[str]] = None, gates: Optional[str] = None,
           units: Optional[Units] = None,
           mask: Optional[Mapping[str, Tensor]] = None) -> nn.Module:
    """Freezes what the selectors pick; with no selector, the whole module.

    layers: LSTM layer indices (both directions) of an rnnfast.LSTM.
    params: parameter names as in module.named_parameters() (any module).
    gates:  gate letters out of "ifgo": only those gates' rows.
    units:  hidden unit indices: their rows in the four gates (or in `gates`).
    mask:   {parameter name: bool tensor of its shape}, True = frozen.
    gates/units apply to the gate-structured parameters (weight_ih/hh, bias_ih/hh) of
    the selected layers (all layers if none given); weight_hr is left alone by them.
    """
    _apply(module, True, layers, params, gates, units, mask)
    return module


def unfreeze(module: nn.Module, *, layers: Optional[Iterable[int]] = None,
             params: Optional[Iterable[str]] = None, gates: Optional[str] = None,
             units: Optional[Units] = None,
             mask: Optional[Mapping[str, Tensor]] = None) -> nn.Module:
    """Undoes `freeze` for what the same selectors pick (mask: True = unfreeze)."""
    _apply(module, False, layers, params, gates, units, mask)
    return module


def _apply(module, frozen, layers, params, gates, units, mask) -> None:
    for owner, name, selection in _select(module, layers, params, gates, units, mask):
        param = getattr(owner, name)
        current = frozen_mask(owner, name)
        if selection is None and current is None:  # whole parameter, no mask involved
            param.requires_grad_(not frozen)
            continue
        if current is None:
            current = torch.full(param.shape, not param.requires_grad, dtype=torch.bool,
                                 device=param.device)
        if selection is None:
            updated = torch.full_like(current, frozen)
        else:
            updated = current | selection if frozen else current & ~selection
        _set_mask(owner, name, param, updated)


def _set_mask(owner: nn.Module, name: str, param: nn.Parameter, mask: Tensor) -> None:
    owner._buffers.pop(_MASK_PREFIX + name, None)
    if bool(mask.all()):
        param.requires_grad_(False)
        return
    param.requires_grad_(True)
    if not bool(mask.any()):
        return
    if not _applies_masks(owner):
        raise TypeError(f"only whole parameters of a {type(owner).__name__} can be frozen "
                        f"(params=[...]); partial masks on {name!r} need an rnnfast.LSTM or "
                        "rnnfast.LSTMCell parameter")
    owner.register_buffer(_MASK_PREFIX + name, mask, persistent=False)
    trainable.prime(mask)  # which gradient blocks to compute: derived now, not mid-step
    _MASKED_MODULES.add(owner)
    _install_optimizer_hooks()


def _applies_masks(module: nn.Module) -> bool:
    from .modules import LSTM, LSTMCell
    return isinstance(module, (LSTM, LSTMCell))


def _gate_param(name: str) -> bool:
    return name.split("_l")[0] in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _layer_of(name: str) -> int:
    """weight_hh_l2_reverse -> 2; LSTMCell parameters (no suffix) are layer 0."""
    return int(name.split("_l")[1].split("_")[0]) if "_l" in name else 0


def _select(module, layers, params, gates, units, mask):
    """Yields (owning module, parameter name, bool selection or None for all of it)."""
    if mask is not None:
        if any(s is not None for s in (layers, params, gates, units)):
            raise ValueError("mask= selects elements on its own; do not combine it with "
                             "layers/params/gates/units")
        for full_name, selection in mask.items():
            owner, name = _owner(module, full_name)
            param = getattr(owner, name)
            if not isinstance(selection, Tensor) or selection.dtype != torch.bool:
                raise TypeError(f"mask[{full_name!r}] must be a bool tensor, got "
                                f"{getattr(selection, 'dtype', type(selection).__name__)}")
            if selection.shape != param.shape:
                raise ValueError(f"mask[{full_name!r}] must have the parameter's shape "
                                 f"{tuple(param.shape)}, got {tuple(selection.shape)}")
            yield owner, name, selection.to(param.device)
        return

    rows = gates is not None or units is not None
    if params is not None:
        if layers is not None:
            raise ValueError("pass either layers= or params=, not both")
        if isinstance(params, str):
            params = [params]
        chosen = [_owner(module, full_name) for full_name in params]
    elif layers is not None or rows:
        if not _applies_masks(module):
            raise TypeError("layers/gates/units select inside an rnnfast.LSTM or rnnfast.LSTMCell; "
                            f"got a {type(module).__name__} (pass the LSTM submodule itself)")
        count = getattr(module, "num_layers", 1)
        wanted = range(count) if layers is None else ([layers] if isinstance(layers, int) else list(layers))
        for layer in wanted:
            if not isinstance(layer, int) or not 0 <= layer < count:
                raise ValueError(f"layers must be integers in [0, {count}), got {layer!r}")
        chosen = [(module, n) for n, _ in module.named_parameters(recurse=False)
                  if _layer_of(n) in wanted]
    else:
        chosen = [_owner(module, n) for n, _ in module.named_parameters()]

    for owner, name in chosen:
        if not rows:
            yield owner, name, None
            continue
        if not _gate_param(name) or not _applies_masks(owner):
            if params is not None:
                raise ValueError(f"gates/units select rows of the gate parameters of an rnnfast "
                                 f"LSTM; {name!r} is not one")
            continue  # weight_hr under a layer selection
        param = getattr(owner, name)
        selection = torch.zeros(param.shape, dtype=torch.bool, device=param.device)
        selection.view(4, owner.hidden_size, -1)[_gate_indices(gates), _unit_indices(units, owner.hidden_size)] = True
        yield owner, name, selection


def _owner(module: nn.Module, full_name: str) -> tuple[nn.Module, str]:
    prefix, _, name = full_name.rpartition(".")
    try:
        owner = module.get_submodule(prefix) if prefix else module
    except AttributeError:
        owner = None
    if owner is None or name not in owner._parameters or owner._parameters[name] is None:
        known = [n for n, _ in module.named_parameters()]
        raise KeyError(f"no parameter named {full_name!r}; expected one of {known}")
    return owner, name


def _gate_indices(gates: Optional[str]):
    if gates is None:
        return slice(None)
    letters = list(gates)
    bad = [g for g in letters if g not in GATES]
    if bad or not letters:
        raise ValueError(f"gates must be letters out of {GATES!r} (input, forget, cell, output), got {gates!r}")
    return torch.tensor([GATES.index(g) for g in letters]).unsqueeze(1)


def _unit_indices(units: Optional[Units], hidden_size: int):
    if units is None:
        return slice(None)
    index = torch.as_tensor([units] if isinstance(units, int) else list(units) if not isinstance(units, Tensor) else units)
    if index.dtype == torch.bool:
        if index.shape != (hidden_size,):
            raise ValueError(f"a bool units mask must have shape ({hidden_size},), got {tuple(index.shape)}")
        index = index.nonzero().flatten()
    if index.dtype not in (torch.int64, torch.int32) or index.dim() != 1:
        raise ValueError(f"units must be unit indices or a bool mask over {hidden_size} units, got {units!r}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= hidden_size):
        raise ValueError(f"units must be in [0, {hidden_size}), got {index.tolist()}")
    return index.long().cpu()


# ---- optimizer safety: frozen entries are put back after every optimizer step ----

_MASKED_MODULES: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
_SNAPSHOTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_hooks_installed = False


def _install_optimizer_hooks() -> None:
    global _hooks_installed
    if not _hooks_installed:
        register_optimizer_step_pre_hook(_snapshot_frozen)
        register_optimizer_step_post_hook(_restore_frozen)
        _hooks_installed = True


def _snapshot_frozen(optimizer, args, kwargs) -> None:
    if not _MASKED_MODULES:
        return
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    saved = []
    for owner in list(_MASKED_MODULES):
        for key, mask in list(owner._buffers.items()):
            if key.startswith(_MASK_PREFIX) and mask is not None:
                param = getattr(owner, key[len(_MASK_PREFIX):])
                if id(param) in in_optimizer:
                    local, local_mask = _owned_entries(param, mask)
                    saved.append((local, local_mask, local.detach().clone()))
    _SNAPSHOTS[optimizer] = saved


def _restore_frozen(optimizer, args, kwargs) -> None:
    # A whole copy and torch.where rather than boolean indexing: indexing by a mask
    # reads its count back to the host, which would break CUDA-graph capture of the step.
    with torch.no_grad():
        for entries, mask, before in _SNAPSHOTS.pop(optimizer, ()):
            entries.copy_(torch.where(mask, before, entries))


def _owned_entries(param: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The parameter entries this process updates, and their part of the mask. FSDP2
    shards a parameter into a DTensor while the mask buffer stays whole on every rank:
    the process owns only its local shard, cut from the mask the same way (Replicate ->
    the parameter's placements is a local slice, no communication)."""
    dtensor = sys.modules.get("torch.distributed.tensor")  # not imported: no DTensor exists
    if dtensor is None or not isinstance(param, dtensor.DTensor):
        return param, mask
    mesh = param.device_mesh
    whole = dtensor.DTensor.from_local(mask, mesh, [dtensor.Replicate()] * mesh.ndim,
                                       run_check=False)
    return param.to_local(), whole.redistribute(mesh, param.placements).to_local()


# ---- trainable_summary ----

@dataclass
class ParamRow:
    name: str
    shape: tuple
    trainable: int
    total: int
    gates: Optional[dict] = None  # gate letter -> (trainable, total) for gate parameters


@dataclass
class TrainableSummary:
    """What will learn: per parameter, per LSTM layer and per gate."""
    rows: list = field(default_factory=list)
    layers: list = field(default_factory=list)  # (label, trainable, total, gates)

    @property
    def trainable(self) -> int:
        return sum(r.trainable for r in self.rows)

    @property
    def total(self) -> int:
        return sum(r.total for r in self.rows)

    def __str__(self) -> str:
        def pct(a, b):
            return f"{100.0 * a / b:5.1f}%" if b else "    -"

        def gate_cols(gates):
            return "".join(f"{pct(*gates[g]):>8}" if gates else f"{'':>8}" for g in GATES)

        width = max([len(r.name) for r in self.rows] + [len(l[0]) for l in self.layers] + [9])
        head = f"{'parameter':<{width}}  {'shape':<14}{'trainable / total':>22}" + "".join(f"{g:>8}" for g in GATES)
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r.name:<{width}}  {str(r.shape):<14}{f'{r.trainable:,} / {r.total:,}':>22}{gate_cols(r.gates)}")
        if self.layers:
            lines.append("-" * len(head))
            for label, trainable, total, gates in self.layers:
                lines.append(f"{label:<{width}}  {'':<14}{f'{trainable:,} / {total:,}':>22}{gate_cols(gates)}")
        lines.append("-" * len(head))
        lines.append(f"{'total':<{width}}  {'':<14}{f'{self.trainable:,} / {self.total:,}':>22}  ({pct(self.trainable, self.total).strip()} trainable)")
        return "\n".join(lines)


def trainable_summary(model: nn.Module) -> TrainableSummary:
    """Counts trainable entries of every parameter of `model`, with a per-gate and
    per-layer breakdown for rnnfast LSTM modules."""
    summary = TrainableSummary()
    for module_name, module in model.named_modules():
        by_layer: dict[int, list] = {}
        for name, param in module.named_parameters(recurse=False):
            mask = frozen_mask(module, name)
            trainable_mask = (~mask if mask is not None
                              else torch.full(param.shape, param.requires_grad, dtype=torch.bool))
            gates = None
            if _applies_masks(module) and _gate_param(name):
                per_gate = trainable_mask.reshape(4, -1)
                gates = {g: (int(per_gate[k].sum()), per_gate[k].numel()) for k, g in enumerate(GATES)}
            row = ParamRow(f"{module_name}.{name}" if module_name else name, tuple(param.shape),
                           int(trainable_mask.sum()), param.numel(), gates)
            summary.rows.append(row)
            if _applies_masks(module):
                by_layer.setdefault(_layer_of(name), []).append(row)
        for layer, rows in by_layer.items():
            gates = {g: (sum(r.gates[g][0] for r in rows if r.gates),
                         sum(r.gates[g][1] for r in rows if r.gates)) for g in GATES}
            label = f"{module_name or type(module).__name__} layer {layer}"
            summary.layers.append((label, sum(r.trainable for r in rows), sum(r.total for r in rows), gates))
    return summary

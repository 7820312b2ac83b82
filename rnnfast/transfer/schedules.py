"""Fine-tuning schedules of ULMFiT (Howard & Ruder, 2018): layer groups, discriminative
learning rates, the slanted triangular learning rate and gradual unfreezing.

Why: lower layers of a pretrained recurrent model hold general features that a small
target set should barely move, upper layers hold task-specific ones. So each group
gets its own learning rate (top group the base lr, each group below it divided by 2.6),
the lr first rises quickly to let the model find a good region and then decays slowly
(slanted triangle), and groups are unfrozen one per epoch from the top, so the
randomly initialised head does not push large gradients into the pretrained layers
before it has settled.

    groups = layer_groups(model)                        # embedding, lstm l0.., head
    opt = torch.optim.AdamW(discriminative_param_groups(groups, lr=1e-3))
    sched = SlantedTriangularLR(opt, total_steps=epochs * steps_per_epoch)
    unfreezer = GradualUnfreezer(model, groups)        # only the top group trains
    for epoch in range(epochs):
        unfreezer.set_epoch(epoch)                       # one more group per epoch
        for batch in data: ...; opt.step(); sched.step()
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ..freeze import freeze as _freeze_fn, frozen_mask, unfreeze as _unfreeze_fn
from .encoder import is_lstm


def _layer_of(name: str) -> int:
    """weight_hh_l2_reverse -> 2."""
    return int(name.split("_l")[1].split("_")[0])


def _owner(model: nn.Module, full_name: str):
    prefix, _, local = full_name.rpartition(".")
    return (model.get_submodule(prefix) if prefix else model), local


@dataclass
class LayerGroup:
    """A named set of parameters trained at one learning rate, bottom to top."""
    name: str
    param_names: list = field(default_factory=list)
    params: list = field(default_factory=list)

    def __repr__(self) -> str:
        return f"LayerGroup({self.name!r}, {len(self.params)} params)"


GroupSpec = Union[None, Sequence[Sequence[str]], Mapping[str, Sequence[str]]]


def layer_groups(model: nn.Module, groups: GroupSpec = None) -> list:
    """The model's parameters split into layer groups, bottom group first.

    Automatic (groups=None): one group "embedding" for every nn.Embedding and any other
    parameter that comes before the first LSTM; one group per LSTM layer (both
    directions together), named "<lstm name>.l<k>"; one group "head" for every
    parameter after the last LSTM layer. Several LSTMs each contribute their layers,
    in the order the model registers them.
    Override: groups = [[prefixes of group 0], [prefixes of group 1], ...] or
    {group name: [prefixes]}; a parameter belongs to the group whose prefix is the
    longest one it starts with; every parameter must land in exactly one group.
    """
    named = list(model.named_parameters())
    if groups is not None:
        return _groups_from_prefixes(named, groups)
    lstm_of = {}
    for module_name, module in model.named_modules():
        if is_lstm(module):
            for pname, _ in module.named_parameters(recurse=False):
                full = f"{module_name}.{pname}" if module_name else pname
                label = f"{module_name}.l{_layer_of(pname)}" if module_name else f"l{_layer_of(pname)}"
                lstm_of[full] = label
    embedding_names = {f"{mn}.{pn}" if mn else pn
                       for mn, m in model.named_modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
                       for pn, _ in m.named_parameters(recurse=False)}
    if not lstm_of:
        raise ValueError("layer_groups: the model has no LSTM to split on; pass groups= explicitly")
    result: dict = {}
    seen_lstm = False
    for name, param in named:
        if name in lstm_of:
            label, seen_lstm = lstm_of[name], True
        elif name in embedding_names or not seen_lstm:
            label = "embedding"
        else:
            label = "head"
        group = result.setdefault(label, LayerGroup(label))
        group.param_names.append(name)
        group.params.append(param)
    order = (["embedding"] if "embedding" in result else []) \
        + [label for label in dict.fromkeys(lstm_of.values()) if label in result] \
        + (["head"] if "head" in result else [])
    return [result[label] for label in order]


def _groups_from_prefixes(named, groups) -> list:
    if isinstance(groups, Mapping):
        items = list(groups.items())
    else:
        items = [(f"group{k}", prefixes) for k, prefixes in enumerate(groups)]
    if not items:
        raise ValueError("groups must name at least one group")
    prefixes = []
    for label, group_prefixes in items:
        if isinstance(group_prefixes, str):
            group_prefixes = [group_prefixes]
        prefixes += [(p, label) for p in group_prefixes]
    result = {label: LayerGroup(label) for label, _ in items}
    unassigned = []
    for name, param in named:
        matches = [(len(p), label) for p, label in prefixes if name == p or name.startswith(p)]
        if not matches:
            unassigned.append(name)
            continue
        label = max(matches)[1]
        result[label].param_names.append(name)
        result[label].params.append(param)
    if unassigned:
        raise ValueError(f"groups leave parameters without a group: {unassigned}; every parameter "
                         "must match a prefix of exactly one group")
    empty = [label for label, g in result.items() if not g.params]
    if empty:
        raise ValueError(f"groups {empty} match no parameter")
    return [result[label] for label, _ in items]


def _as_groups(model_or_groups) -> list:
    if isinstance(model_or_groups, nn.Module):
        return layer_groups(model_or_groups)
    groups = list(model_or_groups)
    if not groups or not all(isinstance(g, LayerGroup) for g in groups):
        raise TypeError("expected a model or the list of LayerGroup from layer_groups()")
    return groups


def discriminative_lrs(num_groups: int, lr: float, factor: float = 2.6) -> list:
    """Learning rate per group, bottom first: the top group gets lr, group k from the
    top lr / factor**k."""
    if num_groups < 1:
        raise ValueError(f"need at least one group, got {num_groups}")
    if factor <= 0:
        raise ValueError(f"factor must be positive, got {factor}")
    return [lr / factor ** (num_groups - 1 - k) for k in range(num_groups)]


def discriminative_param_groups(model_or_groups, lr: float, factor: float = 2.6, **options) -> list:
    """Optimizer param groups with discriminative learning rates, bottom group first:
    [{"params", "lr", "name", **options}, ...]. Frozen parameters are included too, so
    that gradual unfreezing needs no new optimizer (torch.optim skips params without
    a gradient)."""
    groups = _as_groups(model_or_groups)
    return [dict(params=list(g.params), lr=group_lr, name=g.name, **options)
            for g, group_lr in zip(groups, discriminative_lrs(len(groups), lr, factor))]


def slanted_triangular(total_steps: int, cut_frac: float = 0.1, ratio: float = 32.0):
    """The ULMFiT multiplier of the peak lr at step t (0-based):

        cut = floor(T * cut_frac)
        p   = t / cut                                  if t < cut
              1 - (t - cut) / (cut * (1/cut_frac - 1))  otherwise
        lr_t = lr_max * (1 + p * (ratio - 1)) / ratio

    so the lr climbs linearly from lr_max/ratio to lr_max over the first cut steps and
    decays linearly back to lr_max/ratio at t = T. p is clamped to [0, 1] (steps past T
    stay at lr_max/ratio); cut is at least 1."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    if not 0 < cut_frac < 1:
        raise ValueError(f"cut_frac must be in (0, 1), got {cut_frac}")
    if ratio < 1:
        raise ValueError(f"ratio must be at least 1, got {ratio}")
    cut = max(1, math.floor(total_steps * cut_frac))

    def multiplier(step: int) -> float:
        if step < cut:
            p = step / cut
        else:
            p = 1 - (step - cut) / (cut * (1 / cut_frac - 1))
        p = min(1.0, max(0.0, p))
        return (1 + p * (ratio - 1)) / ratio

    return multiplier


class SlantedTriangularLR(LambdaLR):
    """LambdaLR with the slanted triangular multiplier; each param group's lr is its own
    peak (so it composes with discriminative learning rates). Call step() after every
    optimizer step."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, cut_frac: float = 0.1,
                 ratio: float = 32.0, last_epoch: int = -1) -> None:
        self.total_steps, self.cut_frac, self.ratio = total_steps, cut_frac, ratio
        super().__init__(optimizer, slanted_triangular(total_steps, cut_frac, ratio), last_epoch)


class GradualUnfreezer:
    """Unfreezes layer groups one per epoch from the top.

    On construction every group but the top one is frozen; set_epoch(e) leaves the top
    e+1 groups trainable (step() advances by one). "Trainable" means *as the user had
    it* when the unfreezer was made: a parameter frozen before (wholly or by a gate/unit
    mask) comes back exactly so, never more trainable than it was. Frozen groups go
    through rnnfast.freeze, so a frozen LSTM layer below the trainable ones runs without
    a graph and costs no backward work.
    """

    def __init__(self, model: nn.Module, groups: Optional[Sequence[LayerGroup]] = None) -> None:
        self.model = model
        self.groups = list(groups) if groups is not None else layer_groups(model)
        if not self.groups:
            raise ValueError("GradualUnfreezer needs at least one group")
        self._initial = {}
        for group in self.groups:
            for name in group.param_names:
                owner, local = _owner(model, name)
                mask = frozen_mask(owner, local)
                param = getattr(owner, local)
                self._initial[name] = (param.requires_grad, None if mask is None else mask.clone())
        self.epoch = -1
        self.set_epoch(0)

    @property
    def trainable_groups(self) -> list:
        """Names of the groups currently unfrozen (top ones)."""
        count = min(self.epoch + 1, len(self.groups))
        return [g.name for g in self.groups[len(self.groups) - count:]]

    def set_epoch(self, epoch: int) -> list:
        """Top min(epoch+1, #groups) groups trainable, the rest frozen; returns their names."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch
        open_from = len(self.groups) - min(epoch + 1, len(self.groups))
        for k, group in enumerate(self.groups):
            if k >= open_from:
                self._restore(group)
            else:
                _freeze_fn(self.model, params=group.param_names)
        return self.trainable_groups

    def step(self) -> list:
        """Unfreezes one more group (call at the start of each epoch after the first)."""
        return self.set_epoch(self.epoch + 1)

    def _restore(self, group: LayerGroup) -> None:
        for name in group.param_names:
            requires_grad, mask = self._initial[name]
            _unfreeze_fn(self.model, params=[name])
            if not requires_grad:
                _freeze_fn(self.model, params=[name])
            elif mask is not None:
                _freeze_fn(self.model, mask={name: mask})

"""Multi-task learning: one shared encoder, one head per task.

Related tasks regularise each other through the shared encoder; a small target task
borrows statistical strength from larger ones. The knobs that matter are how much each
task's loss counts (`weights`), how often each task is visited (`TaskSampler`:
proportional to data size, uniform, or temperature-scaled in between) and whether the
shared encoder trains at all (`freeze_encoder`: then the LSTM runs without a graph and
only the heads learn, i.e. multi-head feature extraction).

    model = MultiTaskModel(encoder, {"sentiment": nn.Linear(F, 3), "topic": nn.Linear(F, 4)})
    sampler = TaskSampler({"sentiment": 8000, "topic": 120000}, strategy="temperature")
    for step in range(n):
        task = sampler.sample()
        multitask_step(model, opt, {task: next(loaders[task])}, losses, weights)
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Union

import torch
from torch import nn

from ..freeze import freeze as _freeze_fn, unfreeze as _unfreeze_fn
from .encoder import POOLINGS, Lengths, as_encoder

SAMPLING = ("proportional", "uniform", "temperature")


class MultiTaskModel(nn.Module):
    """Shared encoder + per-task heads on pooled features.

    forward(x, lengths=None, task=None): the named task's head output [B, ...], or with
    task=None a dict of every head's output from one encoder pass (tasks that label the
    same inputs). pooling: one mode for all tasks or {task: mode}.
    """

    def __init__(self, encoder: nn.Module, heads: Mapping[str, nn.Module],
                 pooling: Union[str, Mapping[str, str]] = "last", freeze_encoder: bool = False) -> None:
        super().__init__()
        if not heads:
            raise ValueError("MultiTaskModel needs at least one task head")
        self.encoder = as_encoder(encoder)
        self.heads = nn.ModuleDict(dict(heads))
        modes = dict.fromkeys(heads, pooling) if isinstance(pooling, str) else dict(pooling)
        if set(modes) != set(heads):
            raise ValueError(f"pooling names tasks {sorted(modes)}, the heads are {sorted(heads)}")
        for task, mode in modes.items():
            if mode not in POOLINGS:
                raise ValueError(f"pooling for task {task!r} must be one of {POOLINGS}, got {mode!r}")
        self.pooling = modes
        if freeze_encoder:
            self.freeze_encoder()

    @property
    def tasks(self) -> list:
        return list(self.heads)

    def freeze_encoder(self) -> None:
        """The shared layers stop learning (their LSTM then runs without a graph)."""
        _freeze_fn(self.encoder)

    def unfreeze_encoder(self) -> None:
        _unfreeze_fn(self.encoder)

    def _check_task(self, task: str) -> None:
        if task not in self.heads:
            raise KeyError(f"unknown task {task!r}; the model has tasks {self.tasks}")

    def forward(self, x, lengths: Lengths = None, task: Optional[str] = None):
        if task is not None:
            self._check_task(task)
        encoded = self.encoder(x, lengths)
        if task is not None:
            return self.heads[task](encoded.pool(self.pooling[task]))
        pooled = {mode: encoded.pool(mode) for mode in set(self.pooling.values())}
        return {t: head(pooled[self.pooling[t]]) for t, head in self.heads.items()}


class TaskSampler:
    """Which task the next step trains: p(task) ∝ n_task^(1/T).

    proportional: T = 1 (big tasks dominate, each example seen equally often);
    uniform: T = ∞ (each task equally often: small tasks overfit sooner);
    temperature: T given (default 2), in between: the usual compromise.
    """

    def __init__(self, sizes: Mapping[str, int], strategy: str = "proportional",
                 temperature: float = 2.0, generator: Optional[torch.Generator] = None) -> None:
        if strategy not in SAMPLING:
            raise ValueError(f"strategy must be one of {SAMPLING}, got {strategy!r}")
        if not sizes:
            raise ValueError("TaskSampler needs at least one task")
        bad = {t: n for t, n in sizes.items() if not isinstance(n, int) or n <= 0}
        if bad:
            raise ValueError(f"task sizes must be positive integers, got {bad}")
        if strategy == "temperature" and not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.tasks = list(sizes)
        exponent = {"proportional": 1.0, "uniform": 0.0, "temperature": 1.0 / temperature}[strategy]
        scores = torch.tensor([float(sizes[t]) for t in self.tasks], dtype=torch.float64) ** exponent
        self._probs = scores / scores.sum()
        self.generator = generator

    @property
    def probabilities(self) -> dict:
        return dict(zip(self.tasks, self._probs.tolist()))

    def sample(self) -> str:
        index = torch.multinomial(self._probs, 1, generator=self.generator).item()
        return self.tasks[index]

    def __iter__(self):
        while True:
            yield self.sample()


def multitask_loss(model: MultiTaskModel, batches: Mapping[str, tuple],
                   loss_fns: Mapping[str, Callable], weights: Optional[Mapping[str, float]] = None):
    """Weighted sum of the tasks' losses over the given batches.

    batches: {task: (x, lengths, y)} (lengths may be None); only those tasks' heads
    (and the shared encoder, unless frozen) receive gradient. weights: {task: w},
    default 1. Returns (total, {task: unweighted loss}).
    """
    if not batches:
        raise ValueError("multitask_loss: no batches")
    weights = dict(weights or {})
    unknown = [t for t in list(batches) + list(weights) if t not in model.heads]
    if unknown:
        raise KeyError(f"unknown tasks {unknown}; the model has tasks {model.tasks}")
    missing = [t for t in batches if t not in loss_fns]
    if missing:
        raise KeyError(f"no loss function for tasks {missing}")
    total, losses = None, {}
    for task, batch in batches.items():
        if not isinstance(batch, (tuple, list)) or len(batch) != 3:
            raise ValueError(f"batch for task {task!r} must be (x, lengths, y)")
        x, lengths, y = batch
        loss = loss_fns[task](model(x, lengths, task=task), y)
        losses[task] = loss
        term = weights.get(task, 1.0) * loss
        total = term if total is None else total + term
    return total, losses


def multitask_step(model: MultiTaskModel, optimizer: torch.optim.Optimizer,
                   batches: Mapping[str, tuple], loss_fns: Mapping[str, Callable],
                   weights: Optional[Mapping[str, float]] = None) -> dict:
    """One optimizer step on the weighted multi-task loss; returns {task: loss, "total": ...}
    as floats."""
    optimizer.zero_grad(set_to_none=True)
    total, losses = multitask_loss(model, batches, loss_fns, weights)
    total.backward()
    optimizer.step()
    return {**{t: l.item() for t, l in losses.items()}, "total": total.item()}

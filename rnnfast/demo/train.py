"""What every demo experiment shares: batching, the training loop, accuracy, and the
cost measurements (wall time, activation memory, CUDA peak) recorded for each run."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..profiling import saved_activation_bytes
from ..modules import LSTM

LSTM_IMPLS = ("rnnfast", "torch")  # rnnfast.LSTM, or the same model on torch.nn.LSTM


@dataclass
class RunResult:
    """One trained model: what it scored and what it cost."""
    task: str                 # "timeseries" or "text"
    setting: str              # e.g. "GunPoint->ArrowHead", "rotten_tomatoes 10%"
    strategy: str
    seed: int
    lstm: str                 # one of LSTM_IMPLS
    accuracy: float           # on the target's test split
    wall_s: float             # training and evaluation, source pretraining excluded
    activation_mb: float      # bytes autograd saved for backward in one training step
    peak_mb: Optional[float]  # torch.cuda.max_memory_allocated during the run (CUDA only)
    trainable_params: int
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


class Batches:
    """Mini-batches of row-aligned tensors, reshuffled every epoch by `generator`.

    With `lengths_at`, the tensor at that index holds each row's length and the tensor
    before it (token ids [N, T]) is cut to the longest row of the batch, so padding
    costs nothing."""

    def __init__(self, tensors: Sequence[Tensor], batch_size: int, shuffle: bool = True,
                 lengths_at: Optional[int] = None) -> None:
        rows = {t.shape[0] for t in tensors}
        if len(rows) != 1:
            raise ValueError(f"Batches: tensors must have the same number of rows, got {sorted(rows)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tensors, self.batch_size, self.shuffle = list(tensors), batch_size, shuffle
        self.lengths_at = lengths_at
        self.rows = rows.pop()

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)

    def epoch(self, generator: Optional[torch.Generator] = None) -> Iterator[list]:
        order = (torch.randperm(self.rows, generator=generator) if self.shuffle
                 else torch.arange(self.rows))
        for start in range(0, self.rows, self.batch_size):
            index = order[start:start + self.batch_size]
            batch = [t[index.to(t.device)] for t in self.tensors]
            if self.lengths_at is not None:
                longest = int(batch[self.lengths_at].max())
                batch[self.lengths_at - 1] = batch[self.lengths_at - 1][:, :longest]
            yield batch


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def use_torch_lstm(model: nn.Module) -> nn.Module:
    """Swaps every rnnfast.LSTM in `model` for its torch.nn.LSTM copy (weights and
    requires_grad kept): the same experiment on cuDNN / oneDNN for comparison."""
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            if isinstance(child, LSTM):
                setattr(module, name, child.to_torch())
    return model


class Meter:
    """Wall time, CUDA peak memory and activation memory of one run.

    Activation memory is the most autograd kept for backward in any training step,
    parameters excluded: the memory that frozen layers and feature extraction save,
    and the one number that means the same on CPU and GPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.activation_bytes: Optional[int] = None

    def __enter__(self) -> "Meter":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.wall_s = time.perf_counter() - self.start
        self.peak_mb = (torch.cuda.max_memory_allocated(self.device) / 2**20
                        if self.device.type == "cuda" else None)

    def loss(self, model: nn.Module, compute: Callable[[], Tensor]) -> Tensor:
        """compute() -> loss, counting what autograd saves for backward; the largest
        step counts (gradual unfreezing saves more as it opens layers)."""
        saved, loss = saved_activation_bytes(compute, exclude=list(model.parameters()))
        self.activation_bytes = max(saved, self.activation_bytes or 0)
        return loss

    @property
    def activation_mb(self) -> float:
        return (self.activation_bytes or 0) / 2**20


def fit(model: nn.Module, data: Batches, epochs: int, optimizer: torch.optim.Optimizer, *,
        meter: Meter, generator: torch.Generator, scheduler=None,
        on_step: Optional[Callable[[int], None]] = None,
        on_epoch: Optional[Callable[[int], None]] = None, clip: float = 1.0,
        loss_of: Optional[Callable[[list], Tensor]] = None) -> None:
    """Trains for `epochs` passes over `data`. loss_of(batch) -> loss; by default each
    batch is (*model inputs, target) under cross-entropy. on_step(k) runs before step k,
    on_epoch(e) after epoch e (from 1); on_epoch may evaluate (eval mode): each epoch
    starts with model.train()."""
    if loss_of is None:
        loss_of = lambda batch: F.cross_entropy(model(*batch[:-1]), batch[-1])  # noqa: E731
    params = [p for group in optimizer.param_groups for p in group["params"]]
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        for batch in data.epoch(generator):
            if on_step is not None:
                on_step(step)
            optimizer.zero_grad(set_to_none=True)
            loss = meter.loss(model, lambda: loss_of(batch))
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
        if on_epoch is not None:
            on_epoch(epoch)


class _Enough(Exception):
    pass


def step_seconds(model: nn.Module, data: Batches, loss_of: Optional[Callable[[list], Tensor]] = None,
                 budget_s: float = 0.25) -> float:
    """Median seconds of one `fit` step (the Meter's accounting, clipping, AdamW) over
    `data`'s batches after the first (a warm-up), stopping early once the timed steps
    took `budget_s`: the demo's time estimate calibrates on it."""
    device = next(model.parameters()).device
    stamps = []

    def stamp(_step: int = 0) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())
        if len(stamps) > 2 and stamps[-1] - stamps[1] > budget_s:
            raise _Enough

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    try:
        fit(model, data, 1, optimizer, meter=Meter(device), generator=torch.Generator().manual_seed(0),
            on_step=stamp, loss_of=loss_of)
        stamp()
    except _Enough:
        pass
    steps = sorted(b - a for a, b in zip(stamps[1:], stamps[2:]))
    return steps[len(steps) // 2]


def gradual_unfreezing(unfreezer, total_steps: int, open_by: float = 0.5) -> Callable[[int], None]:
    """An on_step callback for a transfer.GradualUnfreezer: one more layer group from
    the top every `open_by * total_steps / groups` steps, so all train by `open_by`."""
    groups = len(unfreezer.groups)
    interval = max(1.0, open_by * total_steps / groups)

    def on_step(step: int) -> None:
        stage = min(groups - 1, int(step / interval))
        if stage != unfreezer.epoch:
            unfreezer.set_epoch(stage)
    return on_step


@torch.no_grad()
def evaluate(model: nn.Module, data: Batches) -> tuple:
    """(accuracy, mean cross-entropy) of a classifier over `data`, in eval mode."""
    model.eval()
    correct = total = 0
    loss = 0.0
    for *inputs, target in data.epoch():
        logits = model(*inputs)
        correct += int((logits.argmax(-1) == target).sum())
        loss += float(F.cross_entropy(logits, target, reduction="sum"))
        total += target.numel()
    return correct / max(total, 1), loss / max(total, 1)


def accuracy(model: nn.Module, data: Batches) -> float:
    return evaluate(model, data)[0]


def majority_rate(labels: Tensor) -> float:
    """Accuracy of always answering the most frequent class: the chance line of a plot."""
    return float(torch.bincount(labels.flatten().cpu()).max()) / max(labels.numel(), 1)


def seeded(seed: int) -> torch.Generator:
    """Seeds torch's global RNG (parameter init, dropout) and returns a generator for
    the data order, both from `seed`."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)

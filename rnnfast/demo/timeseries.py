"""Time-series transfer: UCR/UEA source -> target pairs, an LSTM classifier trained
from scratch against each transfer strategy, on the target's official test split.

The model: input adapter nn.Linear(C, A) -> 2-layer LSTM -> last hidden state -> head.
The adapter gives sets with other channel counts a common LSTM input, so the LSTM
layers transfer between them (the adapter transfers too when the channel counts match).
Every series is resampled to `steps` time steps, so source and target share a time scale.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import transfer
from ..modules import LSTM
from .data import SeriesDataset, SeriesSplit, check_ucr_names, load_ucr, ucr_sets, ucr_sizes
from ..progress import Progress
from .train import (Batches, Meter, RunResult, accuracy, fit, gradual_unfreezing, majority_rate,
                    seeded, step_seconds, trainable_params, use_torch_lstm)

# source -> target. The first is the headline pair (ItalyPowerDemand -> ArrowHead is
# the pair a published CNN transfer study on UCR found most helpful).
DEFAULT_PAIRS = ("ItalyPowerDemand->ArrowHead", "GunPoint->ArrowHead", "JapaneseVowels->BasicMotions")

STRATEGIES = {
    "scratch": "trained from scratch (no source)",
    "finetune": "initialised from the source, everything fine-tuned",
    "freeze_lower": "initialised from the source, input adapter + LSTM layer 0 frozen",
    "features": "feature extraction: frozen source encoder, only the head trains",
    "ulmfit": "gradual unfreezing, discriminative lrs, slanted triangular lr",
    "widen": "source widened to 2x hidden units (same function), then fine-tuned",
}


@dataclass(frozen=True)
class SeriesConfig:
    steps: int = 32           # every series is resampled to this length
    adapter: int = 8          # width of the input adapter
    hidden: int = 32
    layers: int = 2
    lr: float = 3e-3          # from scratch, and for the source model
    transfer_lr: float = 1e-3  # every strategy that starts from the source (stays nearer it)
    batch: int = 16
    epochs: int = 100         # target epochs (ArrowHead: 3 batches an epoch)
    source_steps: int = 300   # optimizer steps of source pretraining
    feature_epochs: int = 300  # epochs of the head on cached features


def parse_pair(pair: str) -> tuple:
    """'Source->Target', or 'Source → Target' as the README writes it -> (source, target)."""
    parts = re.split(r"\s*(?:->|→)\s*", pair.strip())
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"a pair is 'Source->Target' (or 'Source → Target'), got {pair!r}")
    return parts[0], parts[1]


@dataclass
class Prepared:
    """A data set resampled and standardised, on the device."""
    name: str
    x_train: torch.Tensor  # [N, steps, C]
    y_train: torch.Tensor  # [N]
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def channels(self) -> int:
        return self.x_train.shape[2]


def resample(split: SeriesSplit, steps: int) -> torch.Tensor:
    """Each series (its own length, NaN padding dropped) linearly resampled to `steps`."""
    out = split.x.new_empty(split.x.shape[0], steps, split.x.shape[2])
    for row, length in enumerate(split.lengths.tolist()):
        series = torch.nan_to_num(split.x[row, :length]).t().unsqueeze(0)  # [1, C, length]
        out[row] = F.interpolate(series, size=steps, mode="linear", align_corners=True)[0].t()
    return out


def prepare(data: SeriesDataset, steps: int, device: torch.device) -> Prepared:
    """Resampled to `steps`, standardised per channel with the training split's stats."""
    x_train, x_test = resample(data.train, steps), resample(data.test, steps)
    mean = x_train.mean(dim=(0, 1), keepdim=True)
    std = x_train.std(dim=(0, 1), keepdim=True).clamp_min(1e-6)
    return Prepared(data.name, ((x_train - mean) / std).to(device), data.train.y.to(device),
                    ((x_test - mean) / std).to(device), data.test.y.to(device), data.num_classes)


def build_model(channels: int, classes: int, config: SeriesConfig, hidden: Optional[int] = None):
    encoder = transfer.SequenceEncoder(
        LSTM(config.adapter, hidden or config.hidden, num_layers=config.layers, batch_first=True),
        embedding=nn.Linear(channels, config.adapter))
    return transfer.SequenceClassifier(encoder, nn.Linear(hidden or config.hidden, classes), pooling="last")


def pretrain_source(source: Prepared, config: SeriesConfig, seed: int, device: torch.device):
    """The source model, trained on 80% of the source's pooled train+test rows; returns
    it and its accuracy on the other 20% (the target's data is never seen)."""
    generator = seeded(seed)
    x = torch.cat([source.x_train, source.x_test])
    y = torch.cat([source.y_train, source.y_test])
    order = torch.randperm(len(x), generator=generator).to(device)
    cut = int(0.8 * len(x))
    model = build_model(source.channels, source.num_classes, config).to(device)
    train = Batches([x[order[:cut]], y[order[:cut]]], 2 * config.batch)
    epochs = max(1, -(-config.source_steps // len(train)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-2)
    fit(model, train, epochs, optimizer, meter=Meter(device), generator=generator)
    held_out = Batches([x[order[cut:]], y[order[cut:]]], 256, shuffle=False)
    return model, accuracy(model, held_out)


def _from_source(source_model, target: Prepared, config: SeriesConfig, device):
    """Target model initialised from the source's encoder (the head is new; the
    adapter is copied only when the channel counts match)."""
    model = build_model(target.channels, target.num_classes, config).to(device)
    report = transfer.init_from(model, source_model.encoder.state_dict(), rename={"": "encoder."},
                                strict=False)
    adapter_copied = "encoder.embedding.weight" in report.names("copied")
    return model, adapter_copied


def run_strategy(strategy: str, source_model, target: Prepared, config: SeriesConfig, seed: int,
                 impl: str, device: torch.device, setting: str) -> RunResult:
    generator = seeded(seed)
    meter = Meter(device)
    train = Batches([target.x_train, target.y_train], config.batch)
    test = Batches([target.x_test, target.y_test], 256, shuffle=False)
    extra: dict = {}
    with meter:
        if strategy == "scratch":
            model = build_model(target.channels, target.num_classes, config).to(device)
        elif strategy == "widen":
            model, _ = _from_source(source_model, target, config, device)
            wide = transfer.widen(model.encoder.lstm, 2 * config.hidden, head=model.head, noise=1e-3,
                                  generator=generator)
            model.encoder.lstm, model.head = wide.lstm, wide.head
        else:
            model, adapter_copied = _from_source(source_model, target, config, device)
            extra["adapter_transferred"] = adapter_copied
        if strategy == "freeze_lower":
            transfer.freeze_parts(model, layers=[0])
            if adapter_copied:
                model.encoder.embedding.requires_grad_(False)
        if strategy == "features":
            accuracy_ = _feature_extraction(model, train, test, config, generator, meter, impl)
        else:
            if impl == "torch":
                use_torch_lstm(model)
            on_step, scheduler, groups = None, None, model.parameters()
            lr = config.lr if strategy == "scratch" else config.transfer_lr
            if strategy == "ulmfit":
                layer_groups = transfer.layer_groups(model)
                groups = transfer.discriminative_param_groups(layer_groups, lr=lr)
            optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=1e-2)
            if strategy == "ulmfit":
                total = config.epochs * len(train)
                scheduler = transfer.SlantedTriangularLR(optimizer, total_steps=total)
                on_step = gradual_unfreezing(transfer.GradualUnfreezer(model, layer_groups), total)
            fit(model, train, config.epochs, optimizer, meter=meter, generator=generator,
                scheduler=scheduler, on_step=on_step)
            accuracy_ = accuracy(model, test)
    return RunResult("timeseries", setting, strategy, seed, impl, accuracy_, meter.wall_s,
                     meter.activation_mb, meter.peak_mb, trainable_params(model), extra)


def _feature_extraction(model, train: Batches, test: Batches, config: SeriesConfig,
                        generator, meter: Meter, impl: str) -> float:
    """The encoder runs once over the data without a graph; a linear head on the
    pooled (last, mean, max) features trains for many cheap epochs."""
    encoder = model.encoder
    if impl == "torch":
        use_torch_lstm(encoder)
    extractor = transfer.FeatureExtractor(encoder, pooling="concat")
    train_set = extractor.extract((x, None, y) for x, y in train.epoch())
    test_set = extractor.extract((x, None, y) for x, y in test.epoch())
    head = nn.Linear(extractor.feature_size, model.head.out_features).to(train_set.features.device)
    model.head = head
    encoder.requires_grad_(False)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=1e-2)
    fit(head, Batches([train_set.features, train_set.targets[0]], config.batch),
        config.feature_epochs, optimizer, meter=meter, generator=generator)
    return accuracy(head, Batches([test_set.features, test_set.targets[0]], 256, shuffle=False))


def run(pairs, strategies, seeds, config: SeriesConfig, device: torch.device, progress: Progress,
        compare_torch: bool = True, data_root: Optional[str] = None) -> tuple:
    """Every pair x strategy x seed on rnnfast, plus each strategy once (first seed) on
    torch.nn.LSTM. Returns (results, sources): sources has each pair's source accuracy."""
    results, sources = [], {}
    cache: dict = {}

    def load(name: str) -> Prepared:
        if name not in cache:
            cache[name] = prepare(load_ucr(name, data_root), config.steps, device)
        return cache[name]

    for pair in pairs:
        source_name, target_name = parse_pair(pair)
        source, target = load(source_name), load(target_name)
        progress.start(f"{pair}: source pretraining")
        source_model, source_acc = pretrain_source(source, config, seeds[0], device)
        sources[pair] = {"source": source_name, "target": target_name,
                         "source_heldout_accuracy": source_acc,
                         "target_train": len(target.y_train), "target_test": len(target.y_test),
                         "majority_test_accuracy": majority_rate(target.y_test)}
        progress.finish(f"source acc {source_acc:.2f}")
        for strategy in strategies:
            impls = [("rnnfast", s) for s in seeds] + ([("torch", seeds[0])] if compare_torch else [])
            for impl, seed in impls:
                progress.start(f"{pair} {strategy} seed {seed} {impl}")
                result = run_strategy(strategy, source_model, target, config, seed, impl, device, pair)
                results.append(result)
                progress.finish(f"acc {result.accuracy:.2f}")
    return results, sources


RANK_STEPS = 64  # series length the source ranking compares at (the model's 32 loses shape)


def choose_sources(target: str, spec: str, data_root: Optional[str] = None) -> tuple:
    """The sources to transfer into `target` from `spec`: "auto" (the nearest set),
    "auto:K" (the K nearest) or comma-separated names; nearness by
    transfer.rank_sources over every other classification set in the folder (aeon's
    copy by default), measured on the target's training rows only. Returns (sources,
    ranking rows {"source", "distance", "chosen"}, nearest first; empty for names)."""
    spec = spec.strip()
    if not spec.startswith("auto"):
        names = [name.strip() for name in spec.split(",") if name.strip()]
        if not names or target in names:
            raise ValueError(f"--sources must be auto, auto:K or source set names other than the "
                             f"target {target!r}, got {spec!r}")
        check_ucr_names(names, data_root)
        return names, []
    count = 1
    if spec != "auto":
        head, _, k = spec.partition(":")
        if head != "auto" or not k.isdigit() or int(k) < 1:
            raise ValueError(f"--sources auto takes a positive count as auto:K, got {spec!r}")
        count = int(k)
    candidates = [name for name in ucr_sets(data_root) if name != target]
    if count > len(candidates):
        raise ValueError(f"--sources {spec}: only {len(candidates)} other classification sets to rank")
    cpu = torch.device("cpu")
    goal = prepare(load_ucr(target, data_root), RANK_STEPS, cpu)
    pools = {}
    for name in candidates:  # a source's rows are all usable: train and test pooled
        prepared = prepare(load_ucr(name, data_root), RANK_STEPS, cpu)
        pools[name] = (torch.cat([prepared.x_train, prepared.x_test]),
                       torch.cat([prepared.y_train, prepared.y_test]))
    ranking = transfer.rank_sources((goal.x_train, goal.y_train), pools, length=RANK_STEPS)
    chosen = [r.name for r in ranking[:count]]
    return chosen, [{"source": r.name, "distance": r.distance, "chosen": r.name in chosen}
                    for r in ranking]


def planned_work(pairs, strategies, seeds, config: SeriesConfig, compare_torch: bool = True,
                 data_root: Optional[str] = None) -> list:
    """run()'s runs in its order, each as {kind: training steps} (kinds: ("series", impl,
    hidden) for the LSTM classifier, ("series head", width) for the features head),
    counted from the sets' row counts without loading them."""
    def batches(rows: int, size: int) -> int:
        return -(-rows // size)

    plan = []
    for pair in pairs:
        source, target = parse_pair(pair)
        source_batches = batches(int(0.8 * sum(ucr_sizes(source, data_root))), 2 * config.batch)
        source_epochs = max(1, -(-config.source_steps // source_batches))
        plan.append({("series", "rnnfast", config.hidden): source_epochs * source_batches})
        target_batches = batches(ucr_sizes(target, data_root)[0], config.batch)
        for strategy in strategies:
            for impl in ["rnnfast"] * len(seeds) + (["torch"] if compare_torch else []):
                if strategy == "features":
                    plan.append({("series head", 3 * config.hidden): config.feature_epochs * target_batches})
                else:
                    hidden = 2 * config.hidden if strategy == "widen" else config.hidden
                    plan.append({("series", impl, hidden): config.epochs * target_batches})
    return plan


def calibrate(kinds, config: SeriesConfig, device: torch.device, steps: int = 5) -> dict:
    """Seconds of one training step of each kind of planned_work, timed on a few steps
    (after a warm-up) of random series of the demo's shapes on `device`."""
    seconds = {}
    for kind in kinds:
        seeded(0)
        rows = (steps + 1) * config.batch
        if kind[0] == "series head":
            model, x = nn.Linear(kind[1], 3), torch.randn(rows, kind[1])
        else:
            model, x = build_model(1, 3, config, hidden=kind[2]), torch.randn(rows, config.steps, 1)
            if kind[1] == "torch":
                use_torch_lstm(model)
        data = Batches([x.to(device), torch.randint(0, 3, (rows,), device=device)], config.batch)
        seconds[kind] = step_seconds(model.to(device), data)
    return seconds

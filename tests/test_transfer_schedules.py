"""Strategy 4: ULMFiT fine-tuning schedules: layer groups, discriminative learning rates
(÷2.6 per group), the slanted triangular lr (cut_frac 0.1, ratio 32), gradual unfreezing."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnfast
from rnnfast import transfer
from rnnfast.freeze import frozen_mask

V, E, H, T, B = 15, 4, 6, 6, 3


def _model(layers=3):
    encoder = transfer.SequenceEncoder(rnnfast.LSTM(E, H, num_layers=layers, batch_first=True),
                                       embedding=nn.Embedding(V, E))
    return transfer.SequenceClassifier(encoder, nn.Sequential(nn.Linear(H, 8), nn.ReLU(), nn.Linear(8, 2)))


def test_layer_groups_are_embedding_each_lstm_layer_and_head():
    model = _model()
    groups = transfer.layer_groups(model)
    assert [g.name for g in groups] == ["embedding", "encoder.lstm.l0", "encoder.lstm.l1",
                                        "encoder.lstm.l2", "head"]
    assert groups[0].param_names == ["encoder.embedding.weight"]
    assert groups[2].param_names == ["encoder.lstm.weight_ih_l1", "encoder.lstm.weight_hh_l1",
                                     "encoder.lstm.bias_ih_l1", "encoder.lstm.bias_hh_l1"]
    assert groups[-1].param_names == ["head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"]
    bi = transfer.layer_groups(nn.Sequential(nn.Embedding(V, E), nn.LSTM(E, H, 2, bidirectional=True), nn.Linear(2 * H, 2)))
    assert [g.name for g in bi] == ["embedding", "1.l0", "1.l1", "head"]
    assert len(bi[1].params) == 8  # both directions in one group


def test_layer_groups_override_and_errors():
    model = _model()
    groups = transfer.layer_groups(model, {"bottom": ["encoder.embedding", "encoder.lstm"],
                                           "top": ["encoder.lstm.weight_ih_l2", "encoder.lstm.weight_hh_l2",
                                                   "encoder.lstm.bias", "head"]})
    assert [g.name for g in groups] == ["bottom", "top"]
    assert "encoder.lstm.weight_hh_l2" in groups[1].param_names
    assert "encoder.lstm.bias_ih_l0" in groups[1].param_names  # longest prefix wins
    assert "encoder.lstm.weight_hh_l1" in groups[0].param_names
    with pytest.raises(ValueError, match=r"groups leave parameters without a group: \['head.0.weight'"):
        transfer.layer_groups(model, [["encoder"], ["head.2"]])
    with pytest.raises(ValueError, match=r"groups \['group1'\] match no parameter"):
        transfer.layer_groups(model, [["encoder", "head"], ["nothing"]])
    with pytest.raises(ValueError, match="no LSTM to split on"):
        transfer.layer_groups(nn.Linear(2, 2))


def test_discriminative_learning_rates_divide_by_2_6_per_group_below_the_top():
    model = _model()
    param_groups = transfer.discriminative_param_groups(model, lr=0.01, weight_decay=0.1)
    assert [g["name"] for g in param_groups][-1] == "head"
    assert [g["lr"] for g in param_groups] == [0.01 / 2.6 ** 4, 0.01 / 2.6 ** 3, 0.01 / 2.6 ** 2, 0.01 / 2.6, 0.01]
    optimizer = torch.optim.AdamW(param_groups)
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in param_groups]
    assert all(g["weight_decay"] == 0.1 for g in optimizer.param_groups)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    assert transfer.discriminative_lrs(3, 1.0, factor=2.0) == [0.25, 0.5, 1.0]


def test_slanted_triangular_formula_values():
    f = transfer.slanted_triangular(1000, cut_frac=0.1, ratio=32)
    # cut = 100: linear rise over steps 0..100, linear decay to step 1000
    assert f(0) == 1 / 32
    assert f(50) == (1 + 0.5 * 31) / 32
    assert f(100) == 1.0
    assert f(550) == (1 + 0.5 * 31) / 32          # p = 1 - 450 / (100 * 9)
    assert f(1000) == 1 / 32 and f(2000) == 1 / 32
    for t in (7, 99, 101, 733):
        cut = 100
        p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / 0.1 - 1))
        assert f(t) == (1 + p * 31) / 32
    tiny = transfer.slanted_triangular(5)            # floor(0.5) = 0 -> cut = 1
    assert tiny(0) == 1 / 32 and tiny(1) == 1.0
    with pytest.raises(ValueError, match=r"cut_frac must be in \(0, 1\), got 1.5"):
        transfer.slanted_triangular(10, cut_frac=1.5)


def test_slanted_triangular_scheduler_on_discriminative_groups():
    model = _model()
    optimizer = torch.optim.SGD(transfer.discriminative_param_groups(model, lr=0.01), lr=0.01)
    scheduler = transfer.SlantedTriangularLR(optimizer, total_steps=200)  # cut = 20
    f = transfer.slanted_triangular(200)
    peaks = [0.01 / 2.6 ** k for k in (4, 3, 2, 1, 0)]
    for step in range(60):
        assert [g["lr"] for g in optimizer.param_groups] == [p * f(step) for p in peaks]
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[-1]["lr"] == 0.01 * ((1 + (1 - 40 / 180) * 31) / 32)  # step 60


def _train_epoch(model, optimizer, steps=2):
    for _ in range(steps):
        x, y = torch.randint(0, V, (B, T)), torch.randint(0, 2, (B,))
        optimizer.zero_grad()
        F.cross_entropy(model(x, torch.tensor([T, 4, 2])), y).backward()
        optimizer.step()


def test_gradual_unfreezing_opens_one_group_per_epoch_from_the_top():
    model = _model()
    lstm = model.encoder.lstm
    rnnfast.freeze(lstm, layers=[2], gates="f")   # the user's own freezing stays
    rnnfast.freeze(lstm, params=["bias_hh_l1"])
    f_mask = frozen_mask(lstm, "weight_hh_l2").clone()
    groups = transfer.layer_groups(model)
    optimizer = torch.optim.AdamW(transfer.discriminative_param_groups(groups, lr=0.01, weight_decay=0.1))
    unfreezer = transfer.GradualUnfreezer(model, groups)
    for epoch in range(len(groups) + 1):
        assert unfreezer.set_epoch(epoch) == [g.name for g in groups][-(epoch + 1):]
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        _train_epoch(model, optimizer)
        open_groups = set(unfreezer.trainable_groups)
        for group in groups:
            for name, p in zip(group.param_names, group.params):
                if name == "encoder.lstm.bias_hh_l1" or group.name not in open_groups:
                    assert not p.requires_grad and torch.equal(p, before[name]), (epoch, name)
                elif name.startswith("encoder.lstm.") and name.endswith("_l2"):
                    mask = frozen_mask(lstm, name.split(".")[-1])
                    if "weight_hh" in name:
                        assert torch.equal(mask, f_mask)
                    assert mask.view(4, H, -1)[1].all() and not mask.view(4, H, -1)[0].any()
                    assert torch.equal(p[mask], before[name][mask]) and not torch.equal(p[~mask], before[name][~mask])
                else:
                    assert p.requires_grad and not torch.equal(p, before[name]), (epoch, name)
    assert unfreezer.epoch == len(groups)


def test_frozen_lower_groups_run_without_graph():
    model = _model()
    transfer.GradualUnfreezer(model)                  # only the head trains at epoch 0
    out = model.encoder(torch.randint(0, V, (B, T)))
    assert out.output.grad_fn is None                 # the whole LSTM ran without a graph
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        transfer.GradualUnfreezer(model).set_epoch(-1)

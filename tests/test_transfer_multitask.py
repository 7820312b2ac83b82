"""Strategy 5: multi-task learning. Gradient flows exactly as configured: weighted task
losses into the shared encoder, only the visited tasks' heads, nothing into a frozen
encoder; task sampling follows its formula."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnfast
from rnnfast import transfer

I, H, T, B = 4, 5, 6, 3
DT = torch.float64


def _model(freeze_encoder=False):
    lstm = rnnfast.LSTM(I, H, num_layers=2, batch_first=True, dtype=DT)
    heads = {"a": nn.Linear(H, 3, dtype=DT), "b": nn.Linear(3 * H, 2, dtype=DT), "c": nn.Linear(H, 4, dtype=DT)}
    return transfer.MultiTaskModel(lstm, heads, pooling={"a": "last", "b": "concat", "c": "mean"},
                                   freeze_encoder=freeze_encoder)


def _batch(classes, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, I, generator=g, dtype=DT), torch.tensor([T, 2, 4]),
            torch.randint(0, classes, (B,), generator=g))


LOSSES = {"a": F.cross_entropy, "b": F.cross_entropy, "c": F.cross_entropy}


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def test_shared_encoder_gets_the_weighted_sum_of_task_gradients():
    model = _model()
    batches = {"a": _batch(3, 0), "b": _batch(2, 1)}
    weights = {"a": 0.3, "b": 2.0}
    total, losses = transfer.multitask_loss(model, batches, LOSSES, weights)
    g_total = _grads(model, total)
    g_a = _grads(model, transfer.multitask_loss(model, {"a": batches["a"]}, LOSSES)[0])
    g_b = _grads(model, transfer.multitask_loss(model, {"b": batches["b"]}, LOSSES)[0])
    for name, g in g_total.items():
        if name.startswith("encoder."):
            torch.testing.assert_close(g, 0.3 * g_a[name] + 2.0 * g_b[name], rtol=0, atol=1e-13)
        elif name.startswith("heads.a."):
            torch.testing.assert_close(g, 0.3 * g_a[name], rtol=0, atol=1e-14)
            assert g_b[name] is None
        elif name.startswith("heads.b."):
            torch.testing.assert_close(g, 2.0 * g_b[name], rtol=0, atol=1e-14)
        else:  # task c had no batch: its head gets no gradient at all
            assert g is None, name
    assert set(losses) == {"a", "b"}


def test_frozen_shared_encoder_runs_without_graph_and_stays_bit_identical():
    model = _model(freeze_encoder=True)
    out = model.encoder(*_batch(3, 0)[:2])
    assert out.output.grad_fn is None
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.2)
    sampler = transfer.TaskSampler({"a": 10, "b": 30, "c": 5}, generator=torch.Generator().manual_seed(0))
    seen = set()
    for step in range(6):
        task = sampler.sample()
        seen.add(task)
        stats = transfer.multitask_step(model, optimizer, {task: _batch({"a": 3, "b": 2, "c": 4}[task], step)}, LOSSES)
        assert set(stats) == {task, "total"}
    for name, p in model.named_parameters():
        if name.startswith("encoder."):
            assert not p.requires_grad and torch.equal(p, before[name])
        elif name.split(".")[1] in seen:
            assert not torch.equal(p, before[name]), name
    model.unfreeze_encoder()
    assert all(p.requires_grad for p in model.encoder.parameters())


def test_all_heads_from_one_encoder_pass():
    model = _model()
    calls = []
    model.encoder.lstm.register_forward_hook(lambda *a: calls.append(1))
    x, lengths, _ = _batch(3, 0)
    outs = model(x, lengths)
    assert len(calls) == 1 and {k: v.shape for k, v in outs.items()} == {"a": (B, 3), "b": (B, 2), "c": (B, 4)}
    torch.testing.assert_close(outs["b"], model(x, lengths, task="b"), rtol=0, atol=0)


def test_task_sampling_probabilities():
    sizes = {"big": 900, "mid": 90, "small": 10}
    prop = transfer.TaskSampler(sizes, "proportional").probabilities
    assert prop == pytest.approx({"big": 0.9, "mid": 0.09, "small": 0.01}, rel=1e-12)
    assert transfer.TaskSampler(sizes, "uniform").probabilities == pytest.approx(dict.fromkeys(sizes, 1 / 3), rel=1e-12)
    temp = transfer.TaskSampler(sizes, "temperature", temperature=2.0).probabilities
    z = 900 ** 0.5 + 90 ** 0.5 + 10 ** 0.5
    assert temp == pytest.approx({"big": 30 / z, "mid": 90 ** 0.5 / z, "small": 10 ** 0.5 / z}, rel=1e-12)
    sampler = transfer.TaskSampler(sizes, "temperature", generator=torch.Generator().manual_seed(0))
    draws = [sampler.sample() for _ in range(4000)]
    for task, p in temp.items():  # binomial std <= 0.008 here; 0.03 is > 3.5 std
        assert abs(draws.count(task) / len(draws) - p) < 0.03, task


def test_multitask_errors():
    model = _model()
    with pytest.raises(KeyError, match=r"unknown task 'z'; the model has tasks \['a', 'b', 'c'\]"):
        model(torch.zeros(B, T, I, dtype=DT), task="z")
    with pytest.raises(KeyError, match=r"no loss function for tasks \['a'\]"):
        transfer.multitask_loss(model, {"a": _batch(3, 0)}, {})
    with pytest.raises(ValueError, match="strategy must be one of"):
        transfer.TaskSampler({"a": 1}, "random")
    with pytest.raises(ValueError, match=r"task sizes must be positive integers, got \{'a': 0\}"):
        transfer.TaskSampler({"a": 0})
    with pytest.raises(ValueError, match=r"pooling names tasks \['a'\], the heads are \['a', 'b'\]"):
        transfer.MultiTaskModel(rnnfast.LSTM(I, H), {"a": nn.Linear(H, 2), "b": nn.Linear(H, 2)}, pooling={"a": "last"})

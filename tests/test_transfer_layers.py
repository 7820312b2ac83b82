"""Strategy 2: layer-wise transfer. Frozen parts (embedding, chosen LSTM layers, gates,
units) stay bit-identical through real training steps; the rest trains."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnfast
from rnnfast import transfer
from rnnfast.freeze import frozen_mask

V, E, H, T, B = 20, 6, 8, 9, 4


def _classifier():
    encoder = transfer.SequenceEncoder(rnnfast.LSTM(E, H, num_layers=3, batch_first=True),
                                       embedding=nn.Embedding(V, E))
    return transfer.SequenceClassifier(encoder, nn.Linear(3 * H, 3), pooling="concat")


def _train(model, optimizer, steps=3):
    for _ in range(steps):
        x = torch.randint(0, V, (B, T))
        lengths = torch.tensor([T, 5, 3, 7])
        y = torch.randint(0, 3, (B,))
        optimizer.zero_grad()
        F.cross_entropy(model(x, lengths), y).backward()
        optimizer.step()


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.3),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
])
def test_frozen_parts_bit_identical_through_training(make_optimizer):
    model = _classifier()
    transfer.freeze_parts(model, embedding=True, layers=[0])
    transfer.freeze_parts(model, layers=[1], gates="fo")
    transfer.freeze_parts(model, layers=[2], units=[0, 5])
    lstm = model.encoder.lstm
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, make_optimizer(model.parameters()))
    frozen_entries = trained_params = 0
    for name, p in model.named_parameters():
        owner, local = (lstm, name.split(".")[-1]) if name.startswith("encoder.lstm.") else (None, None)
        mask = frozen_mask(owner, local) if owner is not None else None
        if mask is None:
            mask = torch.full(p.shape, not p.requires_grad)
        assert torch.equal(p.detach()[mask], before[name][mask]), name
        frozen_entries += int(mask.sum())
        if not mask.all():
            assert not torch.equal(p.detach()[~mask], before[name][~mask]), f"{name} did not train"
            trained_params += 1
    assert not model.encoder.embedding.weight.requires_grad
    assert not lstm.weight_hh_l0.requires_grad
    assert frozen_mask(lstm, "weight_hh_l1").view(4, H, H)[:, 0, 0].tolist() == [False, True, False, True]
    assert frozen_mask(lstm, "bias_ih_l2").view(4, H)[:, [0, 5]].all()
    assert trained_params == 4 + 4 + 2  # layer 1 and layer 2 params (partly) and the head
    assert frozen_entries > 0


def test_unfreeze_parts_and_summary():
    model = _classifier()
    transfer.freeze_parts(model, embedding=True, layers=[0, 1])
    summary = rnnfast.trainable_summary(model)
    lstm_layer = 4 * H * (H + H + 2)
    assert summary.trainable == lstm_layer + 3 * (3 * H) + 3
    transfer.unfreeze_parts(model, embedding=True, layers=1)
    assert model.encoder.embedding.weight.requires_grad and model.encoder.lstm.weight_ih_l1.requires_grad
    assert not model.encoder.lstm.weight_ih_l0.requires_grad


def test_freeze_parts_errors():
    model = _classifier()
    with pytest.raises(ValueError, match=r"layers must be integers in \[0, 3\), got 4"):
        transfer.freeze_parts(model, layers=[4])
    with pytest.raises(ValueError, match="embedding=True but the model has no nn.Embedding"):
        transfer.freeze_parts(nn.Sequential(rnnfast.LSTM(E, H)), embedding=True)
    with pytest.raises(TypeError, match=r"torch.nn.LSTM; .*rnnfast.convert\(model\)"):
        transfer.freeze_parts(nn.Sequential(nn.LSTM(E, H)), layers=[0])
    two = nn.ModuleDict({"a": rnnfast.LSTM(E, H), "b": rnnfast.LSTM(E, H)})
    with pytest.raises(ValueError, match=r"several LSTMs \['a', 'b'\]; say which with lstm="):
        transfer.freeze_parts(two, layers=[0])
    transfer.freeze_parts(two, layers=[0], lstm="b")
    assert two["a"].weight_ih_l0.requires_grad and not two["b"].weight_ih_l0.requires_grad
    with pytest.raises(KeyError, match="no rnnfast.LSTM named 'c'"):
        transfer.freeze_parts(two, layers=[0], lstm="c")

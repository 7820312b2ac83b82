"""Strategy 8 (bias-only part): every weight frozen, biases trainable. The LSTM backward
skips every dW GEMM (spied on the backend's `needs`), weights stay bit-identical through
optimizer steps with weight decay, biases learn."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnfast
from rnnfast import transfer

V, E, H, T, B = 12, 4, 6, 5, 3


def _model(proj_size=0):
    lstm = rnnfast.LSTM(E, H, num_layers=2, bidirectional=True, proj_size=proj_size, batch_first=True,
                        backend="reference")
    width = 2 * (proj_size or H)
    encoder = transfer.SequenceEncoder(lstm, embedding=nn.Embedding(V, E))
    return transfer.SequenceClassifier(encoder, nn.Sequential(nn.Linear(width, 8), nn.Tanh(), nn.Linear(8, 2)))


@pytest.mark.parametrize("proj_size", [0, 2])
def test_backward_skips_every_weight_gradient_gemm(needs_spy, proj_size):
    model = transfer.bias_only(_model(proj_size))
    x, lengths = torch.randint(0, V, (B, T)), torch.tensor([T, 2, 4])
    F.cross_entropy(model(x, lengths), torch.tensor([0, 1, 1])).backward()
    assert len(needs_spy) == 4  # 2 layers x 2 directions
    for call in needs_spy:
        assert not call["dW_ih"] and not call["dW_hh"] and not call["dW_hr"]
        assert call["db_ih"] and call["db_hh"]
    # the top layer passes dx down (the lower layer's biases need it); the bottom one does not
    assert [c["dx"] for c in needs_spy] == [True, True, False, False]
    for name, p in model.named_parameters():
        assert (p.grad is not None) == transfer.is_bias(name), name


def test_weights_bit_identical_biases_learn():
    model = transfer.bias_only(_model())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.5)
    for step in range(3):
        optimizer.zero_grad()
        x = torch.randint(0, V, (B, T))
        F.cross_entropy(model(x, torch.tensor([T, 3, 1])), torch.tensor([1, 0, 1])).backward()
        optimizer.step()
    biases = 0
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1].startswith("bias"):
            biases += 1
            assert p.requires_grad and not torch.equal(p, before[name]), name
        else:
            assert not p.requires_grad and torch.equal(p, before[name]), name
    assert biases == 8 + 2
    summary = rnnfast.trainable_summary(model)
    assert summary.trainable == 8 * 4 * H + 8 + 2


def test_trainable_head_and_errors():
    model = transfer.bias_only(_model(), trainable_modules=["head"])
    assert all(p.requires_grad for p in model.head.parameters())
    assert not model.encoder.lstm.weight_hh_l1.requires_grad and model.encoder.lstm.bias_ih_l1.requires_grad
    with pytest.raises(KeyError, match=r"trainable_modules names modules the model does not have: \['decoder'\]"):
        transfer.bias_only(_model(), trainable_modules=["decoder"])
    with pytest.raises(ValueError, match="no bias parameter to train"):
        transfer.bias_only(rnnfast.LSTM(E, H, bias=False))

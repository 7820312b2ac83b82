"""Strategy 7: domain-adversarial training. The reversal's backward is exactly -λ·grad,
the schedule is λ = 2/(1+exp(-10p)) - 1, and a DANN step gives the encoder the label
gradient minus λ times the domain gradient while the domain classifier descends its own
loss."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnfast
from rnnfast import transfer

I, H, T, B = 4, 5, 6, 3
DT = torch.float64


def test_gradient_reversal_is_identity_forward_and_minus_lambda_backward():
    x = torch.randn(4, 7, requires_grad=True)
    y = transfer.grad_reverse(x, 0.37)
    assert torch.equal(y, x)
    g = torch.randn(4, 7)
    y.backward(g)
    assert torch.equal(x.grad, g * -0.37)
    layer = transfer.GradientReversalLayer(2.5)
    x.grad = None
    layer(x).backward(g)
    assert torch.equal(x.grad, g * -2.5)
    with pytest.raises(TypeError, match="lambda_ must be a number, got Tensor"):
        transfer.grad_reverse(x, torch.tensor(1.0))


def test_lambda_schedule_values():
    assert transfer.dann_lambda(0.0) == 0.0
    assert transfer.dann_lambda(0.5) == 2 / (1 + math.exp(-5)) - 1
    assert transfer.dann_lambda(1.0) == 2 / (1 + math.exp(-10)) - 1
    for p in (0.01, 0.1, 0.3, 0.77):
        assert transfer.dann_lambda(p) == 2.0 / (1.0 + math.exp(-10 * p)) - 1.0
    assert transfer.dann_lambda(0.1) == pytest.approx(0.46211715726, abs=1e-10)  # tanh(0.5)
    assert transfer.dann_learning_rate(1.0) == 0.01 / 11 ** 0.75
    with pytest.raises(ValueError, match=r"progress must be in \[0, 1\]"):
        transfer.dann_lambda(1.5)


def _dann():
    lstm = rnnfast.LSTM(I, H, num_layers=2, batch_first=True, dtype=DT)
    return transfer.DANN(lstm, nn.Linear(H, 3, dtype=DT), transfer.DomainClassifier(H, hidden=7).to(DT))


def _batches():
    g = torch.Generator().manual_seed(0)
    source = (torch.randn(B, T, I, generator=g, dtype=DT), torch.tensor([T, 3, 2]), torch.tensor([0, 2, 1]))
    target = (torch.randn(B + 1, T, I, generator=g, dtype=DT), torch.tensor([4, T, 1, 5]))
    return source, target


def _grads(model, loss, retain_graph=False):
    """d loss / d parameter for every parameter (zeros where the loss does not reach)."""
    names, params = zip(*model.named_parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=retain_graph)
    return {n: torch.zeros_like(p) if g is None else g for n, p, g in zip(names, params, grads)}


def test_encoder_receives_the_reversed_domain_gradient():
    model = _dann()
    source, target = _batches()
    lam = 0.6
    losses = transfer.dann_losses(model, source, target, lam)
    g_total = _grads(model, losses.total)
    # the same losses computed without any reversal
    fs, ft = model.features(*source[:2]), model.features(*target[:2])
    label = F.cross_entropy(model.label_head(fs), source[2])
    domains = torch.tensor([0] * B + [1] * (B + 1))
    domain_plain = F.cross_entropy(model.domain_classifier.net(torch.cat([fs, ft])), domains)
    g_label = _grads(model, label, retain_graph=True)
    g_domain = _grads(model, domain_plain)
    torch.testing.assert_close(losses.domain, domain_plain, rtol=0, atol=0)
    for name, g in g_total.items():
        if name.startswith("encoder."):        # reversed: label - λ domain
            torch.testing.assert_close(g, g_label[name] - lam * g_domain[name], rtol=0, atol=1e-13)
            assert g_domain[name].abs().max() > 1e-6
        elif name.startswith("domain_classifier."):  # not reversed
            torch.testing.assert_close(g, g_domain[name], rtol=0, atol=1e-14)
        else:
            torch.testing.assert_close(g, g_label[name], rtol=0, atol=1e-14)


def test_dann_step_uses_the_scheduled_lambda_and_updates_with_the_reversed_gradient():
    model = _dann()
    source, target = _batches()
    expected_grads = _grads(model, transfer.dann_losses(model, source, target, transfer.dann_lambda(0.25)).total)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = transfer.dann_step(model, optimizer, source, target, progress=0.25)
    assert stats["lambda"] == 2 / (1 + math.exp(-2.5)) - 1 == model.domain_classifier.grl.lambda_
    assert stats["loss"] == pytest.approx(stats["label_loss"] + stats["domain_loss"], rel=1e-14)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[name] - 0.1 * expected_grads[name], rtol=0, atol=1e-14)
    logits = model(source[0], source[1])
    assert logits.shape == (B, 3)


def test_dann_errors():
    with pytest.raises(TypeError, match="domain_classifier must be a DomainClassifier"):
        transfer.DANN(rnnfast.LSTM(I, H), nn.Linear(H, 2), nn.Linear(H, 2))
    with pytest.raises(ValueError, match="num_domains must be at least 2"):
        transfer.DomainClassifier(H, num_domains=1)
    model = _dann()
    source, target = _batches()
    with pytest.raises(ValueError, match=r"source batch must be \(x, lengths, y\)"):
        transfer.dann_losses(model, source[:2], target, 0.5)

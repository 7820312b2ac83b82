"""Domain-adversarial training (DANN, Ganin & Lempitsky, 2015).

When the target domain has inputs but (almost) no labels, train the encoder so that
a domain classifier cannot tell source features from target features, while a label
head learns the task on the labelled source. The gradient-reversal layer makes this
one minimisation: identity forward, -λ·grad backward, so the domain classifier
descends its loss while the encoder below it ascends it.

λ grows from 0 to 1 over training, λ(p) = 2 / (1 + exp(-γ p)) - 1 with γ = 10 and p the
fraction of training done: early on the domain signal is noise and would only disturb
the features the label head is still learning from.

    model = DANN(encoder, label_head=nn.Linear(F, classes), domain_classifier=DomainClassifier(F))
    for step in range(steps):
        dann_step(model, opt, (xs, ls, ys), (xt, lt), progress=step / steps)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .encoder import POOLINGS, as_encoder


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by -lambda."""

    @staticmethod
    def forward(ctx, x: Tensor, lambda_: float) -> Tensor:
        ctx.lambda_ = float(lambda_)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * -ctx.lambda_, None


def grad_reverse(x: Tensor, lambda_: float = 1.0) -> Tensor:
    """x forward, -lambda_ * grad backward."""
    if not isinstance(lambda_, (int, float)) or isinstance(lambda_, bool):
        raise TypeError(f"lambda_ must be a number, got {type(lambda_).__name__}")
    return GradientReversal.apply(x, lambda_)


class GradientReversalLayer(nn.Module):
    """grad_reverse as a module; set .lambda_ as training progresses."""

    def __init__(self, lambda_: float = 1.0) -> None:
        super().__init__()
        self.lambda_ = lambda_

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.lambda_)

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_}"


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """λ(p) = 2 / (1 + exp(-γ p)) - 1: 0 at p = 0, ~1 at p = 1."""
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1] (fraction of training done), got {progress}")
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


def dann_learning_rate(progress: float, lr0: float = 0.01, alpha: float = 10.0, beta: float = 0.75) -> float:
    """The DANN paper's annealing: lr0 / (1 + α p)^β."""
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    return lr0 / (1.0 + alpha * progress) ** beta


class DomainClassifier(nn.Module):
    """Gradient reversal followed by an MLP that predicts the domain of a feature vector.

    forward(features [B, F], lambda_=None) -> logits [B, num_domains]; lambda_ None uses
    the layer's current .grl.lambda_. The MLP itself trains normally (its gradient is
    not reversed); only what flows back into the features is.
    """

    def __init__(self, in_features: int, hidden: int = 64, num_domains: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if num_domains < 2:
            raise ValueError(f"num_domains must be at least 2, got {num_domains}")
        self.grl = GradientReversalLayer()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_domains))

    def forward(self, features: Tensor, lambda_: Optional[float] = None) -> Tensor:
        reversed_ = grad_reverse(features, self.grl.lambda_ if lambda_ is None else lambda_)
        return self.net(reversed_)


class DANN(nn.Module):
    """Encoder + label head + domain classifier on pooled features.

    forward(x, lengths=None) -> label logits (what is used at test time).
    """

    def __init__(self, encoder: nn.Module, label_head: nn.Module, domain_classifier: DomainClassifier,
                 pooling: str = "last") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not isinstance(domain_classifier, DomainClassifier):
            raise TypeError("domain_classifier must be a DomainClassifier (it carries the gradient "
                            f"reversal), got {type(domain_classifier).__name__}")
        self.encoder = as_encoder(encoder)
        self.label_head = label_head
        self.domain_classifier = domain_classifier
        self.pooling = pooling

    def features(self, x, lengths=None) -> Tensor:
        return self.encoder(x, lengths).pool(self.pooling)

    def forward(self, x, lengths=None) -> Tensor:
        return self.label_head(self.features(x, lengths))


@dataclass
class DANNLosses:
    total: Tensor         # label + domain; its encoder gradient is grad(label) - λ grad(domain)
    label: Tensor
    domain: Tensor
    lambda_: float


def dann_losses(model: DANN, source: tuple, target: tuple, lambda_: float,
                label_loss: Callable = F.cross_entropy) -> DANNLosses:
    """Losses of one DANN step. source = (x, lengths, y) labelled; target = (x, lengths)
    unlabelled (extra items ignored). Domain labels: 0 source, 1 target."""
    if len(source) < 3:
        raise ValueError("source batch must be (x, lengths, y)")
    if len(target) < 2:
        raise ValueError("target batch must be (x, lengths)")
    xs, ls, ys = source[:3]
    xt, lt = target[:2]
    fs = model.features(xs, ls)                                    # [Bs, F]
    ft = model.features(xt, lt)                                    # [Bt, F]
    label = label_loss(model.label_head(fs), ys)
    logits = model.domain_classifier(torch.cat([fs, ft]), lambda_)  # [Bs+Bt, domains]
    domains = torch.cat([torch.zeros(fs.shape[0], dtype=torch.long),
                         torch.ones(ft.shape[0], dtype=torch.long)]).to(logits.device)
    domain = F.cross_entropy(logits, domains)
    return DANNLosses(label + domain, label, domain, lambda_)


def dann_step(model: DANN, optimizer: torch.optim.Optimizer, source: tuple, target: tuple,
              progress: float, *, gamma: float = 10.0, label_loss: Callable = F.cross_entropy) -> dict:
    """One DANN training step at training progress p in [0, 1] with λ = dann_lambda(p).
    Returns floats {"loss", "label_loss", "domain_loss", "lambda"}."""
    lambda_ = dann_lambda(progress, gamma)
    model.domain_classifier.grl.lambda_ = lambda_
    optimizer.zero_grad(set_to_none=True)
    losses = dann_losses(model, source, target, lambda_, label_loss)
    losses.total.backward()
    optimizer.step()
    return {"loss": losses.total.item(), "label_loss": losses.label.item(),
            "domain_loss": losses.domain.item(), "lambda": lambda_}

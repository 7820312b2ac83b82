"""Functional form of one LSTM layer in one direction: checks its arguments, picks the
backend, and runs either the autograd Function (when a gradient can flow) or the bare
forward op (inference: nothing is saved)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from . import backends
from .autograd import LSTMLayerFunction, run_forward, with_lora

NO_MASKS = (None, None, None, None, None)


def lstm_layer(
    x: Tensor,                      # [T, B, I] dense, or packed data [N, I]
    h0: Tensor,                     # [B, P]  (P = proj_size or H)
    c0: Tensor,                     # [B, H]
    w_ih: Tensor,                   # [4H, I]  gate rows i, f, g, o
    w_hh: Tensor,                   # [4H, P]
    b_ih: Optional[Tensor] = None,  # [4H]
    b_hh: Optional[Tensor] = None,  # [4H]
    w_hr: Optional[Tensor] = None,  # [P, H]
    *,
    batch_sizes: Optional[Tensor] = None,  # [T] int64 CPU, for packed x
    reverse: bool = False,
    frozen: Sequence[Optional[Tensor]] = NO_MASKS,  # bool masks for w_ih, w_hh, b_ih, b_hh, w_hr
    backend: str = "auto",
    recompute: bool = False,
    lora_ih: Optional[tuple[Tensor, Tensor]] = None,  # (A [r, I], B [4H, r])
    lora_hh: Optional[tuple[Tensor, Tensor]] = None,  # (A [r, P], B [4H, r])
    lora_scale: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Runs the layer over the whole sequence: returns y [.., P], h_n [B, P], c_n [B, H].

    With reverse=True the sequence is processed from its end (each packed sequence from
    its own last element). `frozen` masks (True = frozen) zero the matching gradient
    entries; a parameter that is wholly frozen should instead not require grad, which
    skips its gradient GEMM entirely. recompute=True keeps only the cell states for
    backward (instead of the four gate activations) and rebuilds the gates there with
    two GEMMs: about a third of the activation memory, for some extra backward time.
    lora_ih / lora_hh: LoRA factors (A, B); the layer runs with W + lora_scale * B @ A
    and backward gives A and B their gradients without forming dW."""
    if torch.is_autocast_enabled(x.device.type):
        # Like nn.LSTM under autocast: the layer runs in the autocast dtype (cell state
        # and accumulation stay fp32 inside); the casts are differentiable, so fp32
        # parameters get fp32 gradients.
        low = torch.get_autocast_dtype(x.device.type)
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = (
            t.to(low) if t is not None and t.dtype == torch.float32 else t
            for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr))
        lora_ih, lora_hh = (None if f is None else tuple(t.to(low) for t in f)
                            for f in (lora_ih, lora_hh))
    check_layer_args(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes)
    lora = (*_checked_lora("lora_ih", lora_ih, w_ih), *_checked_lora("lora_hh", lora_hh, w_hh))
    name = backends.resolve(backend, x.device, x.dtype)
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors + lora):
        y, h_n, c_n, *_ = LSTMLayerFunction.apply(*tensors, *lora, batch_sizes, reverse, *frozen,
                                                  name, recompute, float(lora_scale))
        return y, h_n, c_n
    # Inference: the layer runs on the merged weights.
    w_ih = with_lora(w_ih, lora[0], lora[1], lora_scale)
    w_hh = with_lora(w_hh, lora[2], lora[3], lora_scale)
    y, h_n, c_n, _, _, _ = run_forward(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                       reverse, "none", name)
    return y, h_n, c_n


def check_layer_args(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes) -> None:
    """Clear errors for inconsistent layer arguments: expected vs got. Where torch.nn.LSTM
    checks the same thing, the exception type is torch's and the message starts with
    torch's wording."""
    states = (("h0 (initial hidden state)", h0), ("c0 (initial cell state)", c0))
    params = (("weight_ih", w_ih), ("weight_hh", w_hh), ("bias_ih", b_ih), ("bias_hh", b_hh),
              ("weight_hr", w_hr))
    device, dtype = x.device, x.dtype
    for what, t in params:
        if t is not None and t.device != device:
            raise RuntimeError("Input and parameter tensors are not at the same device, found "
                               f"input tensor at {device} and parameter tensor at {t.device} "
                               f"({what}); move the input to the module's device")
    for what, t in states:
        if t.device != device:
            raise RuntimeError("Input and hidden tensors are not at the same device, found "
                               f"input tensor at {device} and hidden tensor at {t.device} "
                               f"({what})")
    for what, t in params:
        if t is not None and t.dtype != dtype:
            raise ValueError(f"RNN input dtype ({dtype}) does not match weight dtype "
                             f"({t.dtype}). Convert input: input.to({t.dtype}), or convert "
                             f"model: model.to({dtype}) (the mismatched parameter: {what})")
    if not x.dtype.is_floating_point:
        raise TypeError(f"LSTM input must be a floating-point tensor, got dtype {x.dtype}")
    for what, t in states:
        if t.dtype != x.dtype:
            # torch.nn.LSTM fails inside its kernel here, with a RuntimeError.
            raise RuntimeError(f"LSTM input has dtype {x.dtype} but {what} has dtype {t.dtype}; "
                               "input, state and weights must share one dtype")
    if batch_sizes is None:
        if x.dim() != 3:
            raise RuntimeError(f"LSTM layer input must be [T, B, I], got shape {tuple(x.shape)}")
        batch = x.shape[1]
    else:
        if x.dim() != 2:
            raise RuntimeError(f"packed LSTM layer input must be [N, I], got shape {tuple(x.shape)}")
        batch = check_batch_sizes(batch_sizes, x.shape[0])
    four_h, out_size = w_hh.shape
    hidden = four_h // 4
    if four_h % 4 or four_h == 0:
        raise RuntimeError(f"LSTM weight_hh must have 4 * hidden_size rows (gates i, f, g, o), "
                           f"got {four_h}")
    if (b_ih is None) != (b_hh is None):
        raise ValueError("LSTM biases come as a pair: got "
                         f"bias_ih={'a tensor' if b_ih is not None else None}, "
                         f"bias_hh={'a tensor' if b_hh is not None else None}")
    expected = (("weight_ih", w_ih, (four_h, x.shape[-1])), ("bias_ih", b_ih, (four_h,)),
                ("bias_hh", b_hh, (four_h,)), ("weight_hr", w_hr, (out_size, hidden)),
                ("h0 (initial hidden state)", h0, (batch, out_size)),
                ("c0 (initial cell state)", c0, (batch, hidden)))
    for what, t, shape in expected:
        if t is not None and t.shape != shape:
            raise RuntimeError(f"LSTM {what} must have shape {shape}, got {tuple(t.shape)}")
    if (w_hr is None) != (out_size == hidden):
        raise RuntimeError(f"LSTM weight_hh has {out_size} columns for hidden size {hidden}: "
                           "that needs a weight_hr projection of matching size")


def _checked_lora(what: str, factors, weight: Tensor) -> tuple:
    """(A, B) of a LoRA update of `weight` [out, in], checked: A [r, in], B [out, r]."""
    if factors is None:
        return (None, None)
    lora_a, lora_b = factors
    out_features, in_features = weight.shape
    rank = lora_a.shape[0] if lora_a.dim() == 2 else -1
    if lora_a.shape != (rank, in_features) or lora_b.shape != (out_features, rank):
        raise RuntimeError(f"{what} must be (A [r, {in_features}], B [{out_features}, r]), got "
                           f"A {tuple(lora_a.shape)} and B {tuple(lora_b.shape)}")
    for t in (lora_a, lora_b):
        if t.dtype != weight.dtype or t.device != weight.device:
            raise TypeError(f"{what} factors must match the weight ({weight.dtype} on "
                            f"{weight.device}), got {t.dtype} on {t.device}")
    return (lora_a, lora_b)


def check_batch_sizes(batch_sizes: Tensor, rows: int) -> int:
    """Validates a PackedSequence's batch_sizes against its data; returns the batch size."""
    if batch_sizes.device.type != "cpu" or batch_sizes.dtype != torch.int64 or batch_sizes.dim() != 1:
        raise ValueError("PackedSequence.batch_sizes must be a 1-D int64 CPU tensor, got "
                         f"{batch_sizes.dim()}-D {batch_sizes.dtype} on {batch_sizes.device}")
    if batch_sizes.numel() == 0:
        raise ValueError("PackedSequence.batch_sizes is empty: expected at least one time step")
    if bool((batch_sizes <= 0).any()):
        raise ValueError(f"PackedSequence.batch_sizes must all be positive, got {batch_sizes.tolist()}")
    if batch_sizes.numel() > 1 and bool((batch_sizes[1:] > batch_sizes[:-1]).any()):
        raise ValueError("PackedSequence.batch_sizes must be non-increasing (sequences sorted by "
                         f"decreasing length), got {batch_sizes.tolist()}")
    total = int(batch_sizes.sum())
    if total != rows:
        raise ValueError(f"PackedSequence.batch_sizes sum to {total} rows but the data has {rows} rows")
    return int(batch_sizes[0])

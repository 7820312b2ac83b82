"""nn.Module drop-ins: `LSTM` for torch.nn.LSTM and `LSTMCell` for torch.nn.LSTMCell,
plus `convert` to swap them into an existing model.

Parameters, their names, shapes, gate order (i, f, g, o), registration order and
default initialisation are those of torch, so state_dicts load both ways and a seeded
construction gives the same weights. The module only loops over layers and
directions, applies inter-layer dropout and (un)packs; each layer/direction runs
through `functional.lstm_layer`.

They deliberately do not subclass nn.LSTM: torch.compile graph-breaks on anything that
is an instance of nn.LSTM.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import backends
from .freeze import frozen_mask
from .functional import NO_MASKS, check_batch_sizes, lstm_layer


def _layer_param_names(layer: int, reverse: bool, bias: bool, proj: bool) -> list[str]:
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else [])
    names += ["weight_hr"] if proj else []
    return [name + suffix for name in names]


class LSTM(nn.Module):
    """Drop-in replacement for torch.nn.LSTM with fused backends and freeze masks.

    Same arguments as torch.nn.LSTM plus `backend`: "auto" (the fastest verified
    backend for the device/dtype), "reference", "triton", "cuda" or "cpu"; and `recompute`:
    keep only the cell states for backward and rebuild the gate activations there
    (less activation memory for some backward time; see docs/usage.md "Memory").
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None,
                 backend: str = "auto", recompute: bool = False) -> None:
        super().__init__()
        _check_constructor_args(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                                proj_size)
        backends.check_name(backend)
        self.mode = "LSTM"
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.backend = backend
        self.recompute = recompute
        # LoRA adapters (rnnfast.transfer.add_lora): weight name -> names of its A, B.
        self.lora: dict[str, tuple[str, str]] = {}
        self.lora_scale = 1.0
        self.lora_merged = False
        directions = 2 if bidirectional else 1
        out_size = proj_size if proj_size > 0 else hidden_size
        factory = {"device": device, "dtype": dtype}
        self._all_weights: list[list[str]] = []
        for layer in range(num_layers):
            for direction in range(directions):
                layer_input = input_size if layer == 0 else out_size * directions
                shapes = [(4 * hidden_size, layer_input), (4 * hidden_size, out_size)]
                shapes += [(4 * hidden_size,), (4 * hidden_size,)] if bias else []
                shapes += [(proj_size, hidden_size)] if proj_size > 0 else []
                names = _layer_param_names(layer, direction == 1, bias, proj_size > 0)
                for name, shape in zip(names, shapes):
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
                self._all_weights.append(names)
        self._flat_weights_names = [n for names in self._all_weights for n in names]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn.LSTM's init: U(-1/sqrt(H), 1/sqrt(H)) for every parameter, in order."""
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def flatten_parameters(self) -> None:
        """No-op, kept so code written for nn.LSTM (which calls it for cuDNN) runs."""

    @classmethod
    def from_torch(cls, lstm: nn.LSTM, backend: str = "auto", recompute: bool = False) -> "LSTM":
        """A copy of a torch.nn.LSTM (weights, device, dtype, requires_grad, mode)."""
        if not isinstance(lstm, nn.LSTM):
            raise TypeError(f"LSTM.from_torch expects a torch.nn.LSTM, got {type(lstm).__name__}")
        weight = lstm.weight_ih_l0
        new = cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias,
                  lstm.batch_first, lstm.dropout, lstm.bidirectional, lstm.proj_size,
                  device=weight.device, dtype=weight.dtype, backend=backend,
                  recompute=recompute)
        _copy_params(lstm, new)
        return new

    def to_torch(self) -> nn.LSTM:
        """A torch.nn.LSTM copy (weights, device, dtype, requires_grad, mode): for code
        or runtimes without rnnfast, and for comparing against cuDNN/oneDNN. Element
        freeze masks and unmerged LoRA adapters have no nn.LSTM equivalent: merge or
        remove the adapters first; partly frozen parameters raise."""
        if self.lora and not self.lora_merged:
            raise ValueError("LSTM.to_torch: this LSTM has unmerged LoRA adapters; call "
                             "rnnfast.transfer.merge_lora (or remove_lora) first")
        partly = [name for name in self._flat_weights_names if frozen_mask(self, name) is not None]
        if partly:
            raise ValueError(f"LSTM.to_torch: {partly} are partly frozen (gate/unit masks), "
                             "which torch.nn.LSTM cannot express; unfreeze them or freeze whole "
                             "parameters")
        weight = self.weight_ih_l0
        torch_lstm = nn.LSTM(self.input_size, self.hidden_size, self.num_layers, self.bias,
                             self.batch_first, self.dropout, self.bidirectional, self.proj_size,
                             device=weight.device, dtype=weight.dtype)
        base = {k: v for k, v in self.state_dict().items() if k in torch_lstm.state_dict()}
        torch_lstm.load_state_dict(base)
        for name in self._flat_weights_names:
            getattr(torch_lstm, name).requires_grad_(getattr(self, name).requires_grad)
        torch_lstm.train(self.training)
        return torch_lstm

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        if self.backend != "auto":
            s += ", backend={backend!r}"
        if self.recompute:
            s += ", recompute=True"
        if self.lora:
            s += f", lora_adapters={len(self.lora)}, lora_scale={self.lora_scale:g}"
            s += ", merged" if self.lora_merged else ""
        return s.format(**self.__dict__)

    def forward(self, input, hx: Optional[tuple[Tensor, Tensor]] = None):
        directions = 2 if self.bidirectional else 1
        out_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        packed = isinstance(input, PackedSequence)
        if packed:
            x, batch_sizes, sorted_indices, unsorted_indices = input
            if x.dim() != 2:
                raise ValueError(f"LSTM: PackedSequence data must be 2-D [N, input_size], got {x.dim()}-D")
            batch = check_batch_sizes(batch_sizes, x.shape[0])
            batched = True
        else:
            if not isinstance(input, Tensor):
                raise TypeError(f"LSTM: input must be a Tensor or PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            if x.shape[0] == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN, got an "
                                   f"input of shape {tuple(input.shape)}")
            batch, batch_sizes, sorted_indices, unsorted_indices = x.shape[1], None, None, None
        if x.shape[-1] != self.input_size:
            raise RuntimeError("input.size(-1) must be equal to input_size. "
                               f"Expected {self.input_size}, got {x.shape[-1]}")
        h0, c0 = self._initial_state(hx, x, batch, batched, directions, out_size, sorted_indices)

        # At B=1 the Python here is a fair part of a call (a T=32 H=64 layer runs in ~45 us):
        # parameters straight from _parameters (getattr only for parametrized ones, which
        # live elsewhere), no stacking of one layer's states.
        params = self._parameters
        layer_input, h_n, c_n = x, [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                names = self._all_weights[index]
                try:
                    weights = [params[n] for n in names]
                except KeyError:  # torch.nn.utils.parametrize: computed on access
                    weights = [getattr(self, n) for n in names]
                w_ih, w_hh = weights[0], weights[1]
                b_ih, b_hh = (weights[2], weights[3]) if self.bias else (None, None)
                w_hr = weights[-1] if self.proj_size > 0 else None
                y, h, c = lstm_layer(
                    layer_input.contiguous(), h0[index], c0[index], w_ih, w_hh, b_ih, b_hh, w_hr,
                    batch_sizes=batch_sizes, reverse=direction == 1,
                    frozen=self._frozen_masks(names), backend=self.backend,
                    recompute=self.recompute, lora_ih=self._lora_factors(names[0]),
                    lora_hh=self._lora_factors(names[1]), lora_scale=self.lora_scale)
                outputs.append(y)
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if directions == 1 else torch.cat(outputs, -1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, True)
        if len(h_n) == 1:
            h_n, c_n = h_n[0].unsqueeze(0), c_n[0].unsqueeze(0)
        else:
            h_n, c_n = torch.stack(h_n), torch.stack(c_n)
        if unsorted_indices is not None:
            h_n, c_n = h_n.index_select(1, unsorted_indices), c_n.index_select(1, unsorted_indices)

        if packed:
            return PackedSequence(layer_input, batch_sizes, sorted_indices, unsorted_indices), (h_n, c_n)
        output = layer_input
        if not batched:
            return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, (h_n, c_n)

    def _frozen_masks(self, names: list[str]) -> tuple:
        """Element masks (True = frozen) for w_ih, w_hh, b_ih, b_hh, w_hr of one layer."""
        if not self._buffers:
            return NO_MASKS
        by_role = dict.fromkeys(("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"))
        for name in names:
            by_role[name.split("_l")[0]] = frozen_mask(self, name)
        return tuple(by_role.values())

    def _lora_factors(self, weight_name: str) -> Optional[tuple[Tensor, Tensor]]:
        """(A, B) of the LoRA adapter on a weight, unless none or merged into it."""
        names = self.lora.get(weight_name)
        if names is None or self.lora_merged:
            return None
        return getattr(self, names[0]), getattr(self, names[1])

    def _initial_state(self, hx, x: Tensor, batch: int, batched: bool, directions: int,
                       out_size: int, sorted_indices: Optional[Tensor]):
        """(h0, c0) from hx, with nn.LSTM's checks and messages: each a sequence of L*D
        states, [B, P] and [B, H], in the packed batch's sorted order."""
        layers = self.num_layers * directions
        if hx is None:
            return ([x.new_zeros(batch, out_size) for _ in range(layers)],
                    [x.new_zeros(batch, self.hidden_size) for _ in range(layers)])
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2
                and all(isinstance(t, Tensor) for t in hx)):
            got = type(hx).__name__ if not isinstance(hx, (tuple, list)) else f"{type(hx).__name__} of {len(hx)}"
            raise TypeError(f"LSTM: hx must be a tuple (h_0, c_0) of two tensors, got {got}")
        h0, c0 = hx
        want = 3 if batched else 2
        if h0.dim() != want or c0.dim() != want:
            kind = "batched 3-D" if batched else "unbatched 2-D"
            raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got "
                               f"({h0.dim()}-D, {c0.dim()}-D) tensors")
        if not batched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        for i, (t, width) in enumerate(((h0, out_size), (c0, self.hidden_size))):
            expected = (layers, batch, width)
            if tuple(t.shape) != expected:
                shown = expected if batched else (layers, width)
                got = list(t.shape) if batched else [t.shape[0], t.shape[2]]
                raise RuntimeError(f"Expected hidden[{i}] size {shown}, got {got}")
        if sorted_indices is not None:
            h0, c0 = h0.index_select(1, sorted_indices), c0.index_select(1, sorted_indices)
        return h0, c0


class LSTMCell(nn.Module):
    """Drop-in replacement for torch.nn.LSTMCell: one step, (h, c) -> (h', c')."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None, backend: str = "auto") -> None:
        super().__init__()
        backends.check_name(backend)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    reset_parameters = LSTM.reset_parameters

    @classmethod
    def from_torch(cls, cell: nn.LSTMCell, backend: str = "auto") -> "LSTMCell":
        """A copy of a torch.nn.LSTMCell (weights, device, dtype, requires_grad, mode)."""
        if not isinstance(cell, nn.LSTMCell):
            raise TypeError(f"LSTMCell.from_torch expects a torch.nn.LSTMCell, got {type(cell).__name__}")
        weight = cell.weight_ih
        new = cls(cell.input_size, cell.hidden_size, cell.bias, device=weight.device,
                  dtype=weight.dtype, backend=backend)
        _copy_params(cell, new)
        return new

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        s += "" if self.bias else ", bias=False"
        return s + ("" if self.backend == "auto" else f", backend={self.backend!r}")

    def forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None):
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if x.shape[1] != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {x.shape[1]} expected {self.input_size}")
        if hx is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            h0, c0 = zeros, zeros
        else:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2
                    and all(isinstance(t, Tensor) for t in hx)):
                raise TypeError("LSTMCell: hx must be a tuple (h_0, c_0) of two tensors, got "
                                f"{type(hx).__name__}")
            h0, c0 = hx
            for i, t in enumerate((h0, c0)):
                if t.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{i}] to be 1D or 2D, got {t.dim()}D instead")
                if t.dim() != input.dim():
                    raise ValueError(f"LSTMCell: Expected hx[{i}] to be {input.dim()}D like the input, "
                                     f"got {t.dim()}D instead")
            if not batched:
                h0, c0 = h0.unsqueeze(0), c0.unsqueeze(0)
            for i, t in enumerate((h0, c0)):
                if t.shape[0] != x.shape[0]:
                    raise RuntimeError(f"Input batch size {x.shape[0]} doesn't match hidden{i} batch size {t.shape[0]}")
                if t.shape[1] != self.hidden_size:
                    raise RuntimeError(f"hidden{i} has inconsistent hidden_size: got {t.shape[1]}, "
                                       f"expected {self.hidden_size}")
        frozen = NO_MASKS
        if self._buffers:
            frozen = tuple(frozen_mask(self, n) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            frozen += (None,)  # a cell has no projection
        _, h, c = lstm_layer(x.unsqueeze(0), h0, c0, self.weight_ih, self.weight_hh,
                             self.bias_ih, self.bias_hh, frozen=frozen, backend=self.backend)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


def convert(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replaces every torch.nn.LSTM / nn.LSTMCell inside `model` (at any depth) by its
    rnnfast counterpart, weights and requires_grad kept; returns the model. A module
    shared by several parents stays shared. Passing an nn.LSTM itself returns its copy."""
    converted: dict[int, nn.Module] = {}

    def swap(module: nn.Module) -> nn.Module:
        if type(module) is nn.LSTM:
            return converted.setdefault(id(module), LSTM.from_torch(module, backend))
        if type(module) is nn.LSTMCell:
            return converted.setdefault(id(module), LSTMCell.from_torch(module, backend))
        # _modules, not named_children(): the latter hides a child's second name.
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            new = swap(child)
            if new is not child:
                setattr(module, name, new)
        return module

    return swap(model)


def _copy_params(source: nn.Module, target: nn.Module) -> None:
    target.load_state_dict(source.state_dict())
    for name, param in source.named_parameters():
        getattr(target, name).requires_grad_(param.requires_grad)
    target.train(source.training)


def _check_constructor_args(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                            proj_size) -> None:
    """torch.nn.LSTM's constructor checks, in its order, with its exception types and
    messages."""
    if (not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1
            or isinstance(dropout, bool)):
        raise ValueError("dropout should be a number in range [0, 1] representing the "
                         "probability of an element being zeroed")
    if dropout > 0 and num_layers == 1:
        warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                      "non-zero dropout expects num_layers greater than 1, but got "
                      f"dropout={dropout} and num_layers={num_layers}")
    if not isinstance(bias, bool):
        raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
    if not isinstance(batch_first, bool):
        raise TypeError(f"batch_first should be of type bool, got: {type(batch_first).__name__}")
    if not isinstance(input_size, int):
        raise TypeError(f"input_size should be of type int, got: {type(input_size).__name__}")
    if input_size <= 0:
        raise ValueError("input_size must be greater than zero")
    if not isinstance(hidden_size, int):
        raise TypeError(f"hidden_size should be of type int, got: {type(hidden_size).__name__}")
    if hidden_size <= 0:
        raise ValueError("hidden_size must be greater than zero")
    if num_layers <= 0:
        raise ValueError("num_layers must be greater than zero")
    if proj_size < 0:
        raise ValueError("proj_size should be a positive integer or zero to disable projections")
    if proj_size >= hidden_size:
        raise ValueError("proj_size has to be smaller than hidden_size")

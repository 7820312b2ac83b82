"""Heterogeneous transfer: the target network is not shaped like the source.

Each function returns a *new* rnnfast.LSTM (and head) and leaves its arguments alone;
the new modules are fully trainable (re-apply freezing after the change).

widen(lstm, hidden_size)   more hidden units, exactly the same function (Net2WiderNet).
deepen(lstm, position)     one more layer that is nearly the identity, with a proven bound.
map_layers(target, source) copy k source layers into a target of another depth.
resize_input(lstm, size)   a different number of input features; new ones start at zero.

Widening, why it is exact. Let g: {0..H'-1} -> {0..H-1} send the old units to
themselves and each new unit to the unit it copies, and c_u = |g^-1(u)| its copy count.
The new layer's incoming rows (all four gates of W_ih, W_hh, b_ih, b_hh) of unit j are
those of g(j); every weight that *reads* h (W_hh's columns, the next layer's W_ih
columns, W_hr's columns, a following Linear head's columns) gets column k =
old column g(k) / c_g(k). By induction over time, h'_k = h_g(k) and c'_k = c_g(k) (the
cell of a duplicated unit duplicates too), because every sum over the new units,
sum_k W[:, g(k)] / c_g(k) * h_g(k), equals sum_u W[:, u] h_u. Symmetry-breaking noise is
added to those outgoing columns with zero sum over the copies of each unit: the copies
carry identical activations, so any split of a column that sums to the original keeps
the function exactly, while the different outgoing weights give the copies different
gradients, so they can grow apart when fine-tuned.

Deepening, the near-identity layer and its bound. The inserted layer (both directions,
all units) has W_hh = 0, biases b_i = +β, b_f = -β, b_o = +β, b_g = 0, and W_ih = α·I on
the cell-input gate g (unit j reads input j; with a projection W_hr = [I_P | 0]). With
δ = sigmoid(-β) it computes, per element and step,
    i = o = 1 - δ,   f = δ,   g_t = tanh(α x_t),
    c_t = δ c_{t-1} + (1 - δ) g_t,   h_t = (1 - δ) tanh(c_t).
The layer above (or the head) gets its input weights multiplied by 1/α, so the network
sees h_t / α where it saw x_t. For inputs with |x| <= m (m <= 1 for the output of an
LSTM layer without projection) and a zero initial state:
    |h_t / α - x_t| <= 3 m δ + (2/3) α² m³          (near_identity_bound)
Proof: |c_{t-1}| <= tanh(α m) <= α m, so |c_t - g_t| <= δ|c_{t-1}| + δ|g_t| <= 2 δ α m;
tanh is 1-Lipschitz, so |h_t - tanh(g_t)| <= δ|tanh(c_t)| + |c_t - g_t| <= 3 δ α m; and
0 <= u - tanh(tanh(u)) <= (2/3) u³ for u = α x >= 0 (tanh v >= v - v³/3, applied twice;
odd function for u < 0). Divide by α. With the defaults α = 1e-2, β = 20 and m = 1 the
bound is 6.7e-5. Smaller α tightens it quadratically but multiplies the next layer's
input weights by 1/α (larger effective learning rate on that path when fine-tuning);
dropout between layers, if configured, also applies around the new layer in training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..modules import LSTM
from .encoder import is_lstm
from .init import TransferReport, copy_pairs, load_source

_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def _check_lstm(lstm, what: str) -> None:
    if not is_lstm(lstm):
        raise TypeError(f"{what} needs an rnnfast.LSTM or torch.nn.LSTM, got {type(lstm).__name__}")


def _directions(lstm) -> int:
    return 2 if lstm.bidirectional else 1


def _out_size(lstm) -> int:
    return lstm.proj_size if lstm.proj_size > 0 else lstm.hidden_size


def _suffix(layer: int, direction: int) -> str:
    return f"_l{layer}" + ("_reverse" if direction else "")


def _new_lstm(lstm, **changes) -> LSTM:
    """An rnnfast.LSTM configured like `lstm` (dtype, device, backend, recompute too), with changes."""
    weight = lstm.weight_ih_l0
    config = dict(input_size=lstm.input_size, hidden_size=lstm.hidden_size,
                  num_layers=lstm.num_layers, bias=lstm.bias, batch_first=lstm.batch_first,
                  dropout=lstm.dropout, bidirectional=lstm.bidirectional,
                  proj_size=lstm.proj_size, device=weight.device, dtype=weight.dtype,
                  backend=getattr(lstm, "backend", "auto"),
                  recompute=getattr(lstm, "recompute", False))
    config.update(changes)
    new = LSTM(**config)
    new.train(lstm.training)
    return new


def _check_head(head, width: int, what: str) -> None:
    if head is None:
        return
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{what}: head must be an nn.Linear (the layer reading the LSTM output), "
                        f"got {type(head).__name__}")
    if head.in_features % width:
        raise ValueError(f"{what}: head.in_features={head.in_features} is not a multiple of the LSTM "
                         f"output width {width}; the head must read the LSTM output or a pooling "
                         "of it (last/mean/max: 1x, concat: 3x)")


def _copy_head(head: Optional[nn.Linear]) -> Optional[nn.Linear]:
    if head is None:
        return None
    new = nn.Linear(head.in_features, head.out_features, bias=head.bias is not None,
                    device=head.weight.device, dtype=head.weight.dtype)
    new.load_state_dict(head.state_dict())
    new.train(head.training)
    return new


# ---------------------------------------------------------------- widening

@dataclass
class Widened:
    """Result of widen: the new LSTM and head, and per layer·direction (h_n order) the
    index [H'] of the old unit each new unit copies."""
    lstm: LSTM
    head: Optional[nn.Linear]
    index: list = field(default_factory=list)

    def expand_state(self, h: Tensor, c: Tensor) -> tuple:
        """An old (h, c) state [L*D, B, P], [L*D, B, H] as the widened model's state."""
        c_new = torch.stack([c[k][..., g.to(c.device)] for k, g in enumerate(self.index)])
        if self.lstm.proj_size > 0:
            return h, c_new
        return torch.stack([h[k][..., g.to(h.device)] for k, g in enumerate(self.index)]), c_new


def _unit_choice(units, lstm, extra: int, generator) -> dict:
    """layer -> chosen old units [extra] (None: draw at random per direction)."""
    layers = lstm.num_layers
    if units is None:
        return {}
    if isinstance(units, Mapping):
        per_layer = dict(units)
    else:
        per_layer = {layer: units for layer in range(layers)}
    chosen = {}
    for layer, picks in per_layer.items():
        if not isinstance(layer, int) or not 0 <= layer < layers:
            raise ValueError(f"widen: layer {layer!r} does not exist: the LSTM has {layers} "
                             f"layer(s), indices 0..{layers - 1}")
        picks = torch.as_tensor(list(picks) if not isinstance(picks, Tensor) else picks)
        if picks.dim() != 1 or picks.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"widen: units for layer {layer} must be a list of unit indices, got {picks!r}")
        if picks.numel() != extra:
            raise ValueError(f"widen: layer {layer} needs {extra} units to copy (new hidden size "
                             f"{lstm.hidden_size + extra} - old {lstm.hidden_size}), got {picks.numel()}")
        if picks.numel() and (int(picks.min()) < 0 or int(picks.max()) >= lstm.hidden_size):
            raise ValueError(f"widen: units for layer {layer} must be in [0, {lstm.hidden_size}), "
                             f"got {picks.tolist()}")
        chosen[layer] = picks.long()
    return chosen


def _rows(w: Tensor, g: Tensor) -> Tensor:
    """Gate rows [4H, ...] -> [4H', ...]: unit j of every gate takes old unit g[j]."""
    hidden = w.shape[0] // 4
    return w.reshape(4, hidden, *w.shape[1:])[:, g.to(w.device)].reshape(4 * g.numel(), *w.shape[1:])


def _split(w: Tensor, g: Tensor, noise: float, generator) -> Tensor:
    """Columns [R, H] -> [R, H']: column k = w[:, g[k]] / count(g[k]), plus noise with
    zero sum over the copies of each old unit."""
    hidden = w.shape[1]
    g = g.to(w.device)
    counts = torch.bincount(g, minlength=hidden)                    # [H]
    out = w[:, g] / counts[g].to(w.dtype)
    if noise > 0:
        # drawn on the CPU in float64 so a seeded generator gives the same noise anywhere
        eps = (torch.randn(out.shape, generator=generator, dtype=torch.float64) * noise).to(w.device)
        group_mean = torch.zeros(w.shape[0], hidden, dtype=eps.dtype, device=w.device)
        group_mean.index_add_(1, g, eps)
        group_mean /= counts.to(eps.dtype)
        out = out + (eps - group_mean[:, g]).to(w.dtype)
    return out


def widen(lstm: nn.Module, hidden_size: int, *, units=None, head: Optional[nn.Linear] = None,
          noise: float = 0.0, generator: Optional[torch.Generator] = None) -> Widened:
    """The LSTM with `hidden_size` units per layer computing exactly the same function.

    units: which old units each layer duplicates (H' - H indices, repeats allowed): one
           list for all layers, {layer: list} (other layers draw at random), or None
           (random, from `generator`). Both directions of a layer use the layer's list.
    head:  an nn.Linear reading the top layer's output or a pooling of it (its columns
           are split too); it is returned widened in the result.
    noise: std of the zero-sum symmetry-breaking noise on the outgoing columns (0: the
           copies stay exact twins under training).
    With proj_size > 0 only the cell units widen: W_hr's columns are split and the
    layer outputs (and the head) keep their width.
    """
    _check_lstm(lstm, "widen")
    old = lstm.hidden_size
    if not isinstance(hidden_size, int) or hidden_size <= old:
        raise ValueError(f"widen: hidden_size must be an int larger than the current {old}, got {hidden_size!r}")
    if noise < 0:
        raise ValueError(f"widen: noise must be >= 0, got {noise}")
    directions, proj = _directions(lstm), lstm.proj_size > 0
    _check_head(head, directions * _out_size(lstm), "widen")
    extra = hidden_size - old
    chosen = _unit_choice(units, lstm, extra, generator)
    index = []
    for layer in range(lstm.num_layers):
        for direction in range(directions):
            picks = chosen.get(layer)
            if picks is None:
                picks = torch.randint(0, old, (extra,), generator=generator)
            index.append(torch.cat([torch.arange(old), picks]))
    new = _new_lstm(lstm, hidden_size=hidden_size)
    with torch.no_grad():
        for layer in range(lstm.num_layers):
            below = index[(layer - 1) * directions:layer * directions] if layer > 0 and not proj else None
            for direction in range(directions):
                g = index[layer * directions + direction]
                sfx = _suffix(layer, direction)
                w_ih = _rows(getattr(lstm, "weight_ih" + sfx), g)
                if below is not None:
                    w_ih = _split_columns(w_ih, below, noise, generator)
                w_hh = _rows(getattr(lstm, "weight_hh" + sfx), g)
                if not proj:
                    w_hh = _split(w_hh, g, noise, generator)
                getattr(new, "weight_ih" + sfx).copy_(w_ih)
                getattr(new, "weight_hh" + sfx).copy_(w_hh)
                if lstm.bias:
                    getattr(new, "bias_ih" + sfx).copy_(_rows(getattr(lstm, "bias_ih" + sfx), g))
                    getattr(new, "bias_hh" + sfx).copy_(_rows(getattr(lstm, "bias_hh" + sfx), g))
                if proj:
                    getattr(new, "weight_hr" + sfx).copy_(_split(getattr(lstm, "weight_hr" + sfx), g, noise, generator))
        new_head = _copy_head(head)
        if head is not None and not proj:
            top = index[-directions:]
            repeats = head.in_features // (directions * old)
            blocks = list(top) * repeats
            new_head = nn.Linear(repeats * directions * hidden_size, head.out_features,
                                 bias=head.bias is not None, device=head.weight.device,
                                 dtype=head.weight.dtype)
            new_head.weight.copy_(_split_columns(head.weight, blocks, noise, generator))
            if head.bias is not None:
                new_head.bias.copy_(head.bias)
            new_head.train(head.training)
    return Widened(new, new_head, index)


def _split_columns(w: Tensor, blocks: Sequence[Tensor], noise: float, generator) -> Tensor:
    """w [R, len(blocks) * H]: consecutive blocks of H columns, block b read from the
    units that index blocks[b] describes; each block is split by its index."""
    width = w.shape[1] // len(blocks)
    return torch.cat([_split(w[:, b * width:(b + 1) * width], g, noise, generator)
                      for b, g in enumerate(blocks)], 1)


# ---------------------------------------------------------------- deepening

def near_identity_bound(max_abs_input: float, scale: float = 1e-2, saturation: float = 20.0) -> float:
    """Elementwise bound on |h_t / scale - x_t| for the layer deepen inserts, given
    |x| <= max_abs_input and a zero initial state: 3 m δ + (2/3) scale² m³, δ = sigmoid(-saturation).
    Derivation in the module docstring."""
    m = float(max_abs_input)
    delta = 1.0 / (1.0 + math.exp(saturation))
    return 3.0 * m * delta + (2.0 / 3.0) * scale ** 2 * m ** 3


@dataclass
class Deepened:
    """Result of deepen: the new LSTM (and rescaled head), the new layer's index, and
    the settings that enter near_identity_bound."""
    lstm: LSTM
    head: Optional[nn.Linear]
    layer: int
    scale: float
    saturation: float

    def bound(self, max_abs_input: float) -> float:
        return near_identity_bound(max_abs_input, self.scale, self.saturation)

    def expand_state(self, h: Tensor, c: Tensor) -> tuple:
        """An old (h, c) [L*D, B, ..] state with zeros for the inserted layer."""
        d = _directions(self.lstm)
        at = self.layer * d
        zeros_h, zeros_c = h.new_zeros((d,) + h.shape[1:]), c.new_zeros((d,) + c.shape[1:])
        return (torch.cat([h[:at], zeros_h, h[at:]]), torch.cat([c[:at], zeros_c, c[at:]]))


def deepen(lstm: nn.Module, position: Optional[int] = None, *, head: Optional[nn.Linear] = None,
           scale: float = 1e-2, saturation: float = 20.0) -> Deepened:
    """Inserts a near-identity layer at `position` (0..num_layers; default: on top).

    The layer above it (or, on top, `head`) has its input weights multiplied by
    1/scale to undo the layer's gain; see the module docstring for the construction and
    the bound |h/scale - x| <= near_identity_bound(max|x|, scale, saturation).
    Needs bias=True (the gates are saturated through the biases) and, at position 0,
    input_size == the LSTM's output width.
    """
    _check_lstm(lstm, "deepen")
    layers, directions, out = lstm.num_layers, _directions(lstm), _out_size(lstm)
    width = directions * out
    if position is None:
        position = layers
    if not isinstance(position, int) or not 0 <= position <= layers:
        raise ValueError(f"deepen: position must be an int in [0, {layers}] (the new layer's index), "
                         f"got {position!r}")
    if not lstm.bias:
        raise ValueError("deepen: a near-identity layer saturates its gates through the biases; "
                         "this LSTM has bias=False")
    if not 0 < scale <= 1:
        raise ValueError(f"deepen: scale must be in (0, 1], got {scale}")
    if saturation <= 0:
        raise ValueError(f"deepen: saturation must be positive, got {saturation}")
    if position == 0 and lstm.input_size != width:
        raise ValueError(f"deepen: an identity layer at position 0 reads the input ({lstm.input_size} "
                         f"features) and must output as many, but the LSTM's output width is {width}")
    if position == layers:
        if head is None:
            raise ValueError("deepen: a layer inserted on top needs head= (the nn.Linear reading the "
                             "LSTM output) to absorb its 1/scale gain")
    _check_head(head, width, "deepen")

    new = _new_lstm(lstm, num_layers=layers + 1)
    hidden = lstm.hidden_size
    with torch.no_grad():
        for layer in range(layers):
            target = layer if layer < position else layer + 1
            for direction in range(directions):
                for kind in _KINDS:
                    name = kind + _suffix(layer, direction)
                    if hasattr(lstm, name) and isinstance(getattr(lstm, name), Tensor):
                        getattr(new, kind + _suffix(target, direction)).copy_(getattr(lstm, name))
        for direction in range(directions):
            sfx = _suffix(position, direction)
            w_ih = getattr(new, "weight_ih" + sfx)   # [4H, width]
            w_ih.zero_()
            units = torch.arange(out, device=w_ih.device)
            w_ih[2 * hidden + units, direction * out + units] = scale
            getattr(new, "weight_hh" + sfx).zero_()
            bias = getattr(new, "bias_ih" + sfx)
            bias.zero_()
            bias[:hidden] = saturation                 # input gate open
            bias[hidden:2 * hidden] = -saturation      # forget gate shut: no memory
            bias[3 * hidden:] = saturation             # output gate open
            getattr(new, "bias_hh" + sfx).zero_()
            if lstm.proj_size > 0:
                w_hr = getattr(new, "weight_hr" + sfx)  # [P, H]
                w_hr.zero_()
                w_hr[units, units] = 1.0
        new_head = _copy_head(head)
        if position < layers:
            for direction in range(directions):
                getattr(new, "weight_ih" + _suffix(position + 1, direction)).div_(scale)
        else:
            new_head.weight.div_(scale)
    return Deepened(new, new_head, position, scale, saturation)


# ---------------------------------------------------------------- depth mapping

def layer_mapping(source_layers: int, target_layers: int, how: str = "bottom") -> list:
    """Which source layer each target layer takes (None: keeps its initialisation).

    bottom: target layer t <- source t while the source has it (lower layers transfer
            best; extra target layers on top start fresh).
    spread: both ends aligned, the rest evenly: t <- round(t (Ls-1) / (Lt-1)); a deeper
            target repeats source layers, a shallower one skips some.
    """
    if source_layers < 1 or target_layers < 1:
        raise ValueError(f"layer counts must be positive, got source {source_layers}, target {target_layers}")
    if how == "bottom":
        return [t if t < source_layers else None for t in range(target_layers)]
    if how == "spread":
        if target_layers == 1:
            return [0]
        return [round(t * (source_layers - 1) / (target_layers - 1)) for t in range(target_layers)]
    raise ValueError(f"mapping must be 'bottom', 'spread' or a list, got {how!r}")


def map_layers(target: nn.Module, source, mapping: Union[str, Sequence[Optional[int]]] = "bottom", *,
               source_prefix: str = "", strict: bool = False) -> TransferReport:
    """Copies source LSTM layers into the target LSTM's layers, in place.

    source: an LSTM, a state_dict or a weights file (entries under `source_prefix`,
            e.g. "encoder.lstm.").
    mapping: a list with one entry per target layer (source layer index or None), or
            "bottom" / "spread" (see layer_mapping). Layers whose shapes do not fit
            (e.g. source layer 0 into target layer 1 when input_size differs) are
            reported as skipped; target layers mapped to None as missing.
    """
    _check_lstm(target, "map_layers")
    entries = {k[len(source_prefix):]: v for k, v in load_source(source).items()
               if k.startswith(source_prefix)}
    found = sorted({int(k.split("_l")[1].split("_")[0]) for k in entries
                    if k.startswith("weight_ih_l")})
    if not found:
        raise ValueError(f"map_layers: the source has no LSTM weights under prefix {source_prefix!r} "
                         f"(expected names like {source_prefix}weight_ih_l0)")
    source_layers = found[-1] + 1
    if found != list(range(source_layers)):
        raise ValueError(f"map_layers: the source has layers {found}, expected 0..{source_layers - 1}")
    if isinstance(mapping, str):
        mapping = layer_mapping(source_layers, target.num_layers, mapping)
    mapping = list(mapping)
    if len(mapping) != target.num_layers:
        raise ValueError(f"map_layers: mapping needs one entry per target layer ({target.num_layers}), "
                         f"got {len(mapping)}")
    for t, s in enumerate(mapping):
        if s is not None and (not isinstance(s, int) or not 0 <= s < source_layers):
            raise ValueError(f"map_layers: mapping[{t}] must be None or a source layer in "
                             f"[0, {source_layers}), got {s!r}")
    targets = target.state_dict(keep_vars=True)
    pairs = {}
    for name in targets:
        kind, rest = name.split("_l", 1)
        layer = int(rest.split("_")[0])
        s = mapping[layer]
        if s is not None:
            pairs[name] = name.replace(f"_l{layer}", f"_l{s}", 1)
    report = copy_pairs(targets, entries, pairs, {})
    report.unused = [source_prefix + k for k in report.unused]
    for entry_list in (report.copied, report.skipped):
        entry_list[:] = [type(e)(e.target, source_prefix + e.source, e.detail) for e in entry_list]
    if strict and not report.complete:
        raise ValueError(f"map_layers(strict=True): the transfer is incomplete\n{report}")
    return report


# ---------------------------------------------------------------- input width

def resize_input(lstm: nn.Module, input_size: int,
                 columns: Optional[Sequence[Optional[int]]] = None) -> LSTM:
    """The LSTM reading `input_size` features: new features start at zero weight, so
    the outputs do not change whatever values they carry; they learn from there.

    columns: for each new input feature, the old feature it is (index) or None (new).
    Default: old features keep their positions, new ones are appended. An old feature
    left out is dropped (its weights are lost; the function changes unless it was 0).
    """
    _check_lstm(lstm, "resize_input")
    if not isinstance(input_size, int) or input_size <= 0:
        raise ValueError(f"resize_input: input_size must be a positive int, got {input_size!r}")
    old = lstm.input_size
    if columns is None:
        columns = [j if j < old else None for j in range(input_size)]
    columns = list(columns)
    if len(columns) != input_size:
        raise ValueError(f"resize_input: columns needs one entry per new input feature ({input_size}), "
                         f"got {len(columns)}")
    used = [c for c in columns if c is not None]
    bad = [c for c in used if not isinstance(c, int) or not 0 <= c < old]
    if bad:
        raise ValueError(f"resize_input: columns entries must be None or old feature indices in [0, {old}), got {bad}")
    if len(set(used)) != len(used):
        raise ValueError("resize_input: an old feature appears twice in columns; a duplicated input "
                         "would double its contribution")
    new = _new_lstm(lstm, input_size=input_size)
    new_state = {}
    keep = [j for j, c in enumerate(columns) if c is not None]
    for name, value in lstm.state_dict().items():
        if name.startswith("weight_ih_l0"):
            w = value.new_zeros(value.shape[0], input_size)
            w[:, torch.tensor(keep, dtype=torch.long, device=w.device)] = \
                value[:, torch.tensor(used, dtype=torch.long, device=w.device)]
            value = w
        new_state[name] = value
    new.load_state_dict(new_state)
    return new

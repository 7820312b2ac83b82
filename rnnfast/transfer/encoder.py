"""The shared pieces every transfer strategy stands on: a sequence encoder that handles
padding correctly, pooling of its output into one vector per sequence, and a
classifier (encoder -> pool -> head) whose parameter names the other helpers know.

Why an encoder wrapper at all: a padded batch fed straight into an LSTM lets the
padding run through the recurrence. The forward direction's outputs at valid steps are
unaffected, but its final state is not, and the *reverse* direction starts at the
padding, so every one of its outputs is wrong. `SequenceEncoder` packs the batch when
lengths are given, so padding never enters the recurrence, and unpacks the result so
pooling can work on a plain tensor with a validity mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..modules import LSTM

POOLINGS = ("last", "mean", "max", "concat")

Lengths = Union[Tensor, Sequence[int], None]


def is_lstm(module: nn.Module) -> bool:
    return isinstance(module, (LSTM, nn.LSTM))


def pool(output: Union[Tensor, PackedSequence], lengths: Lengths = None, mode: str = "last", *,
         batch_first: bool = False, bidirectional: bool = False) -> Tensor:
    """One vector per sequence from an LSTM's output: [B, F] (F = D*P, or 3*D*P for concat).

    output: [T, B, D*P] ([B, T, D*P] with batch_first) or a PackedSequence (its lengths
            are used and `lengths` must be None).
    lengths: [B] valid steps per sequence; None means every sequence is T long.
    mode:
      last   the state after the whole sequence: the forward direction's output at the
             last *valid* step (lengths-1, not T-1). With bidirectional=True the reverse
             direction's half is taken at step 0, where that direction has read the whole
             sequence, so "last" equals cat(h_n[-2], h_n[-1]) of the top layer.
      mean   average over the valid steps only.
      max    elementwise max over the valid steps only (padding never wins).
      concat cat([last, max, mean], -1): ULMFiT's concat pooling.
    Padding positions are never read, whatever they hold (NaN included), but for
    "last"/bidirectional to be right the LSTM itself must not have run over padding:
    feed it a PackedSequence (SequenceEncoder does).
    """
    if mode not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {mode!r}")
    if isinstance(output, PackedSequence):
        if lengths is not None:
            raise ValueError("pool: a PackedSequence carries its own lengths; do not pass lengths=")
        output, lengths = pad_packed_sequence(output)
    elif not isinstance(output, Tensor):
        raise TypeError(f"pool: output must be a Tensor or PackedSequence, got {type(output).__name__}")
    elif batch_first:
        output = output.transpose(0, 1)
    if output.dim() != 3:
        raise ValueError(f"pool: expected a batched LSTM output [T, B, F] (or [B, T, F] with "
                         f"batch_first), got shape {tuple(output.shape)}")
    steps, batch, width = output.shape
    if bidirectional and width % 2:
        raise ValueError(f"pool: a bidirectional output has an even width (two directions), got {width}")
    lengths = check_lengths(lengths, batch, steps, output.device)

    valid = torch.arange(steps, device=output.device).unsqueeze(1) < lengths.unsqueeze(0)  # [T, B]
    valid = valid.unsqueeze(-1)                                                             # [T, B, 1]
    rows = torch.arange(batch, device=output.device)
    pooled = {}
    if mode in ("last", "concat"):
        last = output[lengths - 1, rows]                                  # [B, F]
        if bidirectional:
            half = width // 2
            last = torch.cat([last[:, :half], output[0, :, half:]], -1)  # reverse dir: step 0
        pooled["last"] = last
    if mode in ("max", "concat"):
        pooled["max"] = output.masked_fill(~valid, float("-inf")).amax(0)
    if mode in ("mean", "concat"):
        total = torch.where(valid, output, output.new_zeros(())).sum(0)
        pooled["mean"] = total / lengths.unsqueeze(1).to(output.dtype)
    if mode == "concat":
        return torch.cat([pooled["last"], pooled["max"], pooled["mean"]], -1)
    return pooled[mode]


def pooled_width(output_width: int, mode: str) -> int:
    """Features per sequence that `pool` returns for an LSTM output of that width."""
    if mode not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {mode!r}")
    return 3 * output_width if mode == "concat" else output_width


def check_lengths(lengths: Lengths, batch: int, steps: int, device) -> Tensor:
    """lengths as an int64 tensor [B] on `device`, each in [1, T]; clear errors otherwise."""
    if lengths is None:
        return torch.full((batch,), steps, dtype=torch.long, device=device)
    lengths = torch.as_tensor(lengths)
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.dim() != 1:
        raise ValueError(f"lengths must be a 1-D integer tensor [B], got {lengths.dim()}-D {lengths.dtype}")
    if lengths.numel() != batch:
        raise ValueError(f"lengths has {lengths.numel()} entries but the batch has {batch} sequences")
    if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > steps):
        raise ValueError(f"lengths must be in [1, {steps}] (the padded length), got "
                         f"min {int(lengths.min())}, max {int(lengths.max())}")
    return lengths.to(device=device, dtype=torch.long)


@dataclass
class EncoderOutput:
    """What a SequenceEncoder returns. output is padded with zeros past each length."""
    output: Tensor             # [T, B, D*P] ([B, T, D*P] with batch_first)
    lengths: Optional[Tensor]  # [B] int64 (CPU), None when every sequence is T long
    h_n: Tensor                # [L*D, B, P]
    c_n: Tensor                # [L*D, B, H]
    batch_first: bool
    bidirectional: bool

    def pool(self, mode: str = "last") -> Tensor:
        """[B, F]: see `pool`."""
        return pool(self.output, self.lengths, mode, batch_first=self.batch_first,
                    bidirectional=self.bidirectional)


class SequenceEncoder(nn.Module):
    """An optional embedding (or any input module) followed by an LSTM, with lengths.

    forward(x, lengths=None, hx=None) -> EncoderOutput
      x: token ids [B, T] / [T, B] (when `embedding` maps ids to vectors), features
         [B, T, I] / [T, B, I] (layout of the LSTM's batch_first), or a PackedSequence
         (the embedding is applied to its rows).
      lengths: [B] valid steps; the batch is packed so padding never enters the LSTM.
    """

    def __init__(self, lstm: nn.Module, embedding: Optional[nn.Module] = None) -> None:
        super().__init__()
        if not is_lstm(lstm):
            raise TypeError(f"SequenceEncoder needs an rnnfast.LSTM or torch.nn.LSTM, got {type(lstm).__name__}")
        self.embedding = embedding
        self.lstm = lstm

    @property
    def output_size(self) -> int:
        """Width D*P of the LSTM output."""
        return lstm_output_width(self.lstm)

    def forward(self, x, lengths: Lengths = None, hx=None) -> EncoderOutput:
        batch_first = self.lstm.batch_first
        bidirectional = self.lstm.bidirectional
        if isinstance(x, PackedSequence):
            if lengths is not None:
                raise ValueError("SequenceEncoder: a PackedSequence carries its own lengths; "
                                 "do not pass lengths=")
            if self.embedding is not None:
                x = PackedSequence(self.embedding(x.data), x.batch_sizes, x.sorted_indices,
                                   x.unsorted_indices)
            out, (h_n, c_n) = self.lstm(x, hx)
            out, lengths = pad_packed_sequence(out, batch_first=batch_first)
            return EncoderOutput(out, lengths, h_n, c_n, batch_first, bidirectional)
        if not isinstance(x, Tensor):
            raise TypeError(f"SequenceEncoder: x must be a Tensor or PackedSequence, got {type(x).__name__}")
        if self.embedding is not None:
            x = self.embedding(x)
        if x.dim() != 3:
            raise ValueError("SequenceEncoder: expected a batch [B, T, I] ([T, B, I] unless "
                             f"batch_first) after the embedding, got shape {tuple(x.shape)}")
        if lengths is None:
            out, (h_n, c_n) = self.lstm(x, hx)
            return EncoderOutput(out, None, h_n, c_n, batch_first, bidirectional)
        steps, batch = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
        lengths = check_lengths(lengths, batch, steps, "cpu")
        packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
        out, (h_n, c_n) = self.lstm(packed, hx)
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=steps)
        return EncoderOutput(out, lengths, h_n, c_n, batch_first, bidirectional)


def lstm_output_width(lstm: nn.Module) -> int:
    """D * P: what each step of the LSTM's output holds."""
    out = lstm.proj_size if lstm.proj_size > 0 else lstm.hidden_size
    return out * (2 if lstm.bidirectional else 1)


def as_encoder(module: nn.Module) -> SequenceEncoder:
    """A SequenceEncoder for `module`: itself, an LSTM, or an nn.Sequential whose last
    child is an LSTM (the children before it become the embedding/input stage)."""
    if isinstance(module, SequenceEncoder):
        return module
    if is_lstm(module):
        return SequenceEncoder(module)
    if isinstance(module, nn.Sequential) and len(module) and is_lstm(module[-1]):
        front = list(module)[:-1]
        embedding = None if not front else front[0] if len(front) == 1 else nn.Sequential(*front)
        return SequenceEncoder(module[-1], embedding)
    raise TypeError("expected a SequenceEncoder, an rnnfast.LSTM / nn.LSTM, or an nn.Sequential "
                    f"ending in one; got {type(module).__name__}. Wrap other encoders in "
                    "SequenceEncoder(lstm, embedding=...)")


class SequenceClassifier(nn.Module):
    """encoder -> pool -> head: the model the fine-tuning helpers are written for.

    Its parameters are named embedding (encoder.embedding.*), LSTM layers
    (encoder.lstm.*_l{k}) and head (head.*), which is what `layer_groups` splits on.
    forward(x, lengths=None) -> head(pooled features) [B, ...].
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, pooling: str = "last") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.encoder = as_encoder(encoder)
        self.head = head
        self.pooling = pooling

    def features(self, x, lengths: Lengths = None) -> Tensor:
        """Pooled encoder features [B, F]."""
        return self.encoder(x, lengths).pool(self.pooling)

    def forward(self, x, lengths: Lengths = None) -> Tensor:
        return self.head(self.features(x, lengths))

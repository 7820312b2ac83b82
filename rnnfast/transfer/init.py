"""Parameter initialisation from a source model, with a report.

`init_from(target, source)` copies every entry of the source (an rnnfast or torch
model, a state_dict, or a safetensors / torch.save file) into the target entry of the
same name and shape. Whatever does not fit is *reported*, never silently dropped: the
returned `TransferReport` lists what was copied, what was remapped (vocabularies), what
was skipped and why (shape mismatch, ...), which target entries kept their own
initialisation (missing) and which source entries found no home (unused). Pass
strict=True to turn an incomplete transfer into an error.

Vocabulary remapping (`remap_rows`, or `vocab=` in init_from): the target's vocabulary
rarely equals the source's. Tokens present in both keep their source vector; tokens new
to the target get the mean of all source vectors, the choice of ULMFiT, which puts them
in the middle of the learnt distribution instead of at an arbitrary random point.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

Vocab = Union[Sequence[str], Mapping[str, int]]
Source = Union[nn.Module, Mapping[str, Tensor], str, os.PathLike]


@dataclass(frozen=True)
class Entry:
    """One line of a TransferReport: target name <- source name, with a detail
    (how it was remapped, why it was skipped, or a dtype conversion note)."""
    target: Optional[str]
    source: Optional[str]
    detail: str = ""

    def __str__(self) -> str:
        arrow = f"{self.target} <- {self.source}" if self.target and self.source else (self.target or self.source)
        return f"{arrow}: {self.detail}" if self.detail else arrow


@dataclass
class TransferReport:
    """What init_from / map_layers did, entry by entry."""
    copied: list = field(default_factory=list)    # Entry: same name/shape, values copied
    remapped: list = field(default_factory=list)  # Entry: rows remapped (vocabulary)
    skipped: list = field(default_factory=list)   # Entry: a source existed but did not fit; detail = why
    missing: list = field(default_factory=list)   # target names no source entry maps to (keep their init)
    unused: list = field(default_factory=list)    # source names that map to no target entry
    hint: str = ""

    @property
    def complete(self) -> bool:
        """Every target entry received source values (copied or remapped)."""
        return not self.skipped and not self.missing

    def names(self, kind: str) -> list:
        """Target names (source names for 'unused') of one section."""
        items = getattr(self, kind)
        return [e if isinstance(e, str) else (e.target or e.source) for e in items]

    def __str__(self) -> str:
        lines = [f"transfer: {len(self.copied)} copied, {len(self.remapped)} remapped, "
                 f"{len(self.skipped)} skipped, {len(self.missing)} missing, {len(self.unused)} unused"]
        for kind in ("copied", "remapped", "skipped", "missing", "unused"):
            items = getattr(self, kind)
            if items:
                lines.append(f"{kind}:")
                lines.extend(f"  {item}" for item in items)
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


def load_source(source: Source) -> dict:
    """name -> tensor from a module (its state_dict), a mapping, or a file path
    (*.safetensors through safetensors, anything else through torch.load(weights_only=True))."""
    if isinstance(source, nn.Module):
        return dict(source.state_dict())
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no source weights file at {path!r}")
        if path.endswith(".safetensors"):
            try:
                from safetensors.torch import load_file
            except ImportError as error:  # an optional dependency
                raise ImportError("reading a .safetensors file needs the safetensors package "
                                  "(pip install safetensors)") from error
            return dict(load_file(path))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
            loaded = loaded["state_dict"]
        source = loaded
    if not isinstance(source, Mapping):
        raise TypeError("source must be an nn.Module, a state_dict (mapping name -> tensor) or a "
                        f"path to a .safetensors / torch.save file; got {type(source).__name__}")
    bad = [k for k, v in source.items() if not isinstance(v, Tensor)]
    if bad:
        raise TypeError(f"source entries must be tensors; not tensors: {bad}")
    return dict(source)


def init_from(target: nn.Module, source: Source, *,
              rename: Optional[Mapping[str, str]] = None,
              vocab: Union[None, tuple, Mapping[str, tuple]] = None,
              new_rows: str = "mean",
              strict: bool = False) -> TransferReport:
    """Copies the source's parameters and buffers into `target` in place; returns a report.

    rename: {source prefix: target prefix}, e.g. {"": "encoder.lstm."} to load a bare
            LSTM checkpoint into a classifier's encoder, or {"rnn.": "encoder.lstm."}.
            A source name takes the longest prefix it starts with.
    vocab:  (source_vocab, target_vocab) to remap the rows of every nn.Embedding weight
            of the target, or {target name: (source_vocab, target_vocab)} to remap
            exactly those entries (e.g. a decoder's weight and bias as well). A vocab is
            a list of tokens (row i = token i) or a {token: row} dict.
    new_rows: what tokens new to the target get: "mean" (mean source row) or "zeros".
    strict: raise ValueError if any target entry was skipped or missing.
    Values are copied in place (the target's dtype, device, requires_grad and freeze
    masks stay); a dtype conversion is noted in the copied entry.
    """
    entries = load_source(source)
    targets = target.state_dict(keep_vars=True)
    pairs = _pairs_by_rename(targets, entries, rename)
    remaps = _vocab_plan(target, targets, vocab)
    report = copy_pairs(targets, entries, pairs, remaps, new_rows)
    if not report.copied and not report.remapped:
        report.hint = _prefix_hint(targets, entries)
    if strict and not report.complete:
        raise ValueError(f"init_from(strict=True): the transfer is incomplete\n{report}")
    return report


def copy_pairs(targets: Mapping[str, Tensor], entries: Mapping[str, Tensor],
               pairs: Mapping[str, Optional[str]], remaps: Mapping[str, tuple],
               new_rows: str = "mean") -> TransferReport:
    """The copy loop shared by init_from and map_layers. pairs: target name -> source
    name (None: no source for it); remaps: target name -> (source_vocab, target_vocab)."""
    report = TransferReport()
    used = set()
    with torch.no_grad():
        for name, tensor in targets.items():
            source_name = pairs.get(name)
            if source_name is None or source_name not in entries:
                report.missing.append(name)
                continue
            used.add(source_name)
            value = entries[source_name]
            if name in remaps:
                try:
                    rows, stats = remap_rows(value, *remaps[name], fill=new_rows)
                except ValueError as error:
                    report.skipped.append(Entry(name, source_name, f"vocabulary remap failed: {error}"))
                    continue
                if rows.shape != tensor.shape:
                    report.skipped.append(Entry(name, source_name, (
                        f"after the vocabulary remap the shape is {tuple(rows.shape)} but the "
                        f"target's is {tuple(tensor.shape)} (target vocabulary of {rows.shape[0]} "
                        f"tokens for {tensor.shape[0]} rows?)")))
                    continue
                tensor.copy_(rows)
                report.remapped.append(Entry(name, source_name, f"vocabulary: {stats}"))
                continue
            if value.shape != tensor.shape:
                report.skipped.append(Entry(name, source_name, (
                    f"shape mismatch: source {tuple(value.shape)}, target {tuple(tensor.shape)}")))
                continue
            if value.dtype.is_floating_point != tensor.dtype.is_floating_point:
                report.skipped.append(Entry(name, source_name, (
                    f"dtype mismatch: source {value.dtype}, target {tensor.dtype}")))
                continue
            tensor.copy_(value)
            note = f"{value.dtype} -> {tensor.dtype}" if value.dtype != tensor.dtype else ""
            report.copied.append(Entry(name, source_name, note))
    report.unused = [k for k in entries if k not in used]
    return report


def _pairs_by_rename(targets, entries, rename) -> dict:
    """target name -> source name, applying the {source prefix: target prefix} map."""
    if rename is None:
        return {name: name for name in targets}
    if not isinstance(rename, Mapping):
        raise TypeError(f"rename must be a mapping {{source prefix: target prefix}}, got {type(rename).__name__}")
    ordered = sorted(rename.items(), key=lambda kv: -len(kv[0]))
    pairs: dict = {}
    clashes = []
    for source_name in entries:
        for prefix, new_prefix in ordered:
            if source_name.startswith(prefix):
                mapped = new_prefix + source_name[len(prefix):]
                break
        else:
            mapped = source_name
        if mapped in pairs:
            clashes.append((pairs[mapped], source_name, mapped))
        pairs[mapped] = source_name
    if clashes:
        first = clashes[0]
        raise ValueError(f"rename maps several source entries onto one target: {first[0]!r} and "
                         f"{first[1]!r} both become {first[2]!r}")
    return pairs


def _vocab_plan(target: nn.Module, targets, vocab) -> dict:
    if vocab is None:
        return {}
    if isinstance(vocab, tuple):
        if len(vocab) != 2:
            raise ValueError(f"vocab must be a pair (source_vocab, target_vocab), got {len(vocab)} items")
        names = [f"{prefix}.weight" if prefix else "weight"
                 for prefix, m in target.named_modules() if isinstance(m, nn.Embedding)]
        if not names:
            raise ValueError("vocab=(source_vocab, target_vocab) remaps nn.Embedding weights, but the "
                             "target has no nn.Embedding; name the entries: vocab={name: (src, tgt)}")
        return {name: vocab for name in names}
    if not isinstance(vocab, Mapping):
        raise TypeError(f"vocab must be a pair or a mapping name -> pair, got {type(vocab).__name__}")
    unknown = [name for name in vocab if name not in targets]
    if unknown:
        raise KeyError(f"vocab names entries the target does not have: {unknown}; "
                       f"expected some of {list(targets)}")
    return dict(vocab)


def _prefix_hint(targets, entries) -> str:
    """Nothing matched: guess the rename from the longest dotted suffix a source name
    shares with a target name (e.g. rnn.weight_ih_l0 vs encoder.lstm.weight_ih_l0)."""
    best = (0, "", "")
    for source_name in entries:
        s_parts = source_name.split(".")
        for name in targets:
            t_parts = name.split(".")
            k = 0
            while k < min(len(s_parts), len(t_parts)) and s_parts[-1 - k] == t_parts[-1 - k]:
                k += 1
            if k > best[0] and (k < len(s_parts) or k < len(t_parts)):
                best = (k, ".".join(s_parts[:-k] + [""]) if k < len(s_parts) else "",
                        ".".join(t_parts[:-k] + [""]) if k < len(t_parts) else "")
    if best[0] == 0:
        return "no name matched between source and target"
    return f"no name matched; the names differ by a prefix: try rename={{{best[1]!r}: {best[2]!r}}}"


def _vocab_index(vocab: Vocab, what: str) -> dict:
    if isinstance(vocab, Mapping):
        index = dict(vocab)
        rows = sorted(index.values())
        if rows != list(range(len(rows))):
            raise ValueError(f"{what} vocabulary dict must map tokens to rows 0..{len(rows) - 1}, each once")
        return index
    if isinstance(vocab, (str, bytes)) or not isinstance(vocab, Iterable):
        raise TypeError(f"{what} vocabulary must be a list of tokens or a {{token: row}} dict, "
                        f"got {type(vocab).__name__}")
    tokens = list(vocab)
    index = {token: row for row, token in enumerate(tokens)}
    if len(index) != len(tokens):
        seen, dup = set(), None
        for token in tokens:
            if token in seen:
                dup = token
                break
            seen.add(token)
        raise ValueError(f"{what} vocabulary lists token {dup!r} more than once")
    return index


@dataclass(frozen=True)
class RemapStats:
    kept: int    # target tokens found in the source (their source row copied)
    new: int     # target tokens not in the source (filled)
    fill: str

    def __str__(self) -> str:
        return f"{self.kept} of {self.kept + self.new} tokens kept their source row, {self.new} new ({self.fill})"


def remap_rows(weight: Tensor, source_vocab: Vocab, target_vocab: Vocab, *,
               fill: str = "mean") -> tuple[Tensor, RemapStats]:
    """Rows of `weight` [V_source, ...] rearranged for the target vocabulary:
    returns ([V_target, ...], stats). Row j holds the source row of target token j when
    the source knows it, else the mean of all source rows (fill="mean") or zeros."""
    if fill not in ("mean", "zeros"):
        raise ValueError(f"fill must be 'mean' or 'zeros', got {fill!r}")
    src = _vocab_index(source_vocab, "source")
    tgt = _vocab_index(target_vocab, "target")
    if weight.dim() == 0 or weight.shape[0] != len(src):
        raise ValueError(f"the source vocabulary has {len(src)} tokens but the source tensor has "
                         f"shape {tuple(weight.shape)} (expected {len(src)} rows)")
    by_row = sorted(tgt.items(), key=lambda kv: kv[1])
    source_rows = torch.tensor([src.get(token, -1) for token, _ in by_row], dtype=torch.long)
    known = source_rows >= 0
    out = weight.new_empty((len(tgt),) + tuple(weight.shape[1:]))
    if fill == "mean":
        out[:] = weight.mean(0) if weight.dtype.is_floating_point else 0
    else:
        out.zero_()
    out[known.to(weight.device)] = weight[source_rows[known].to(weight.device)]
    stats = RemapStats(int(known.sum()), int((~known).sum()), "mean source row" if fill == "mean" else "zeros")
    return out, stats


def remap_embedding(embedding: nn.Embedding, source_weight: Tensor, source_vocab: Vocab,
                    target_vocab: Vocab, *, fill: str = "mean") -> RemapStats:
    """Fills `embedding.weight` in place from a source embedding matrix [V_source, D]."""
    rows, stats = remap_rows(source_weight, source_vocab, target_vocab, fill=fill)
    if rows.shape != embedding.weight.shape:
        raise ValueError(f"the remapped matrix is {tuple(rows.shape)} but the embedding is "
                         f"{tuple(embedding.weight.shape)}: target vocabulary size and embedding "
                         "size must agree")
    with torch.no_grad():
        embedding.weight.copy_(rows)
    return stats

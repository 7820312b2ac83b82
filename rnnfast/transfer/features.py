"""Feature extraction: a frozen encoder turns sequences into fixed vectors, a small head
learns on them.

This is the cheapest strategy: the encoder runs once per example, under torch.no_grad
(no graph, nothing saved) and in eval mode (no dropout), and the pooled features can be
kept in memory or on disk, so the head trains for any number of epochs at the cost of a
single encoder pass.

    extractor = FeatureExtractor(encoder, pooling="concat")
    train = extractor.extract(batches, cache="train.features.pt")  # (x, lengths, y) batches
    for epoch in range(50):
        for f, y in train.loader(batch_size=64): ...

A disk cache is keyed by a fingerprint of the encoder's weights and the pooling: if
either changed since the file was written, the features are recomputed and the file
rewritten. The fingerprint cannot see the data, so use one cache file per data set.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Iterable, Optional, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from .encoder import POOLINGS, Lengths, as_encoder, pooled_width

CACHE_FORMAT = 1


@dataclass
class FeatureSet:
    """Pooled features [N, F] and the targets that came with them (each [N, ...])."""
    features: Tensor
    targets: tuple
    source: str = "computed"  # "computed" or "disk" (loaded from a cache file)

    def __len__(self) -> int:
        return self.features.shape[0]

    def loader(self, batch_size: int = 64, shuffle: bool = True,
               generator: Optional[torch.Generator] = None) -> DataLoader:
        """Batches (features, *targets) for training a head over many epochs."""
        return DataLoader(TensorDataset(self.features, *self.targets), batch_size=batch_size,
                          shuffle=shuffle, generator=generator)


class FeatureExtractor(nn.Module):
    """A frozen encoder plus pooling: forward(x, lengths=None) -> features [B, F].

    encoder: a SequenceEncoder, an rnnfast.LSTM / nn.LSTM, or an nn.Sequential ending in
    one. The encoder's own requires_grad flags are left alone: extraction runs under
    torch.no_grad and in eval mode regardless (and puts back the training flags it found).
    """

    def __init__(self, encoder: nn.Module, pooling: str = "concat") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.encoder = as_encoder(encoder)
        self.pooling = pooling

    @property
    def feature_size(self) -> int:
        return pooled_width(self.encoder.output_size, self.pooling)

    def forward(self, x, lengths: Lengths = None) -> Tensor:
        modes = [(m, m.training) for m in self.encoder.modules()]
        self.encoder.eval()
        try:
            with torch.no_grad():
                return self.encoder(x, lengths).pool(self.pooling)
        finally:
            for module, training in modes:  # put back exactly what was there
                module.training = training

    def fingerprint(self) -> str:
        """sha256 over the encoder's state (names, shapes, dtypes, bytes) and the pooling."""
        digest = hashlib.sha256(f"rnnfast-features/{CACHE_FORMAT}/{self.pooling}".encode())
        for name, tensor in self.encoder.state_dict().items():
            t = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return digest.hexdigest()

    def extract(self, batches: Iterable, cache: Union[None, str, os.PathLike] = None) -> FeatureSet:
        """Features for a whole data set, from batches (x, lengths, *targets).

        lengths may be None (every sequence full length). Targets are concatenated over
        batches and returned with the features, in order. With `cache` (a file path),
        features whose fingerprint matches the current encoder and pooling are loaded
        from there without running the encoder; otherwise they are computed and saved.
        """
        fingerprint = self.fingerprint() if cache is not None else None
        if cache is not None and os.path.exists(cache):
            stored = torch.load(cache, map_location="cpu", weights_only=True)
            if isinstance(stored, dict) and stored.get("fingerprint") == fingerprint:
                return FeatureSet(stored["features"], tuple(stored["targets"]), source="disk")
        features, targets = [], []
        for number, batch in enumerate(batches):
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError(f"batch {number}: expected a tuple (x, lengths, *targets) with "
                                 f"lengths possibly None, got {type(batch).__name__}"
                                 + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
            x, lengths, *ys = batch
            out = self(x, lengths)
            features.append(out)
            if targets and len(ys) != len(targets):
                raise ValueError(f"batch {number} has {len(ys)} targets, the first batch had {len(targets)}")
            if not targets:
                targets = [[] for _ in ys]
            for store, y in zip(targets, ys):
                y = torch.as_tensor(y)
                if y.dim() == 0 or y.shape[0] != out.shape[0]:
                    raise ValueError(f"batch {number}: a target has shape {tuple(y.shape)} but the "
                                     f"batch has {out.shape[0]} sequences")
                store.append(y)
        if not features:
            raise ValueError("extract: no batches")
        result = FeatureSet(torch.cat(features), tuple(torch.cat(t) for t in targets))
        if cache is not None:
            directory = os.path.dirname(os.fspath(cache))
            if directory:
                os.makedirs(directory, exist_ok=True)
            tmp = f"{os.fspath(cache)}.tmp"
            torch.save({"fingerprint": fingerprint, "features": result.features.cpu(),
                        "targets": [t.cpu() for t in result.targets]}, tmp)
            os.replace(tmp, cache)  # never leave a half-written cache behind
        return result

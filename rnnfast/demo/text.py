"""A word-level tokenizer built from the data, and an LSTM language model on top of a
SequenceEncoder (the encoder a classifier later starts from)."""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..transfer import SequenceEncoder

_URL = re.compile(r"https?://\S+|www\.\S+")
_USER = re.compile(r"@\w+")
# The tokens GloVe's vectors were trained on (Stanford's PTB-style tokenizer): a negated
# contraction splits before "n't" ("don't" -> "do n't", "can't" -> "ca n't"), a clitic
# keeps its apostrophe ("it's" -> "it 's"), and words joined by '-' or '.' stay one token
# ("writer-director", "3.5"). 98.8% of the review tokens then have a GloVe vector (97.5%
# when contractions stay whole).
_TOKEN = re.compile(r"<url>|<user>|[a-z0-9]+(?=n't)|n't|'[a-z]+|[a-z0-9]+(?:[-.][a-z0-9]+)*|[^\sa-z0-9]")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'"})
_ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&#39;": "'"}


class Tokenizer:
    """Lower-cased words, numbers and single punctuation marks, split as GloVe's corpus
    was (see _TOKEN); links and @mentions become <url> and <user>. Id 0 is padding, 1 unknown."""

    PAD, UNK = "<pad>", "<unk>"
    UNK_ID = 1

    def __init__(self, vocab: Sequence[str]) -> None:
        if list(vocab[:2]) != [self.PAD, self.UNK]:
            raise ValueError(f"a vocabulary starts with {[self.PAD, self.UNK]}, got {list(vocab[:2])}")
        self.vocab = list(vocab)
        self.index = {token: i for i, token in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    @staticmethod
    def tokens(text: str) -> list:
        text = text.lower().translate(_APOSTROPHES)
        for entity, char in _ENTITIES.items():
            text = text.replace(entity, char)
        text = _USER.sub(" <user> ", _URL.sub(" <url> ", text))
        return _TOKEN.findall(text)

    @classmethod
    def build(cls, texts: Iterable[str], max_size: int, min_count: int = 2) -> "Tokenizer":
        """The `max_size` most frequent tokens seen at least `min_count` times
        (ties broken alphabetically, so the vocabulary is deterministic)."""
        if max_size < 3:
            raise ValueError(f"max_size must be >= 3 (padding, unknown and one token), got {max_size}")
        counts = Counter(token for text in texts for token in cls.tokens(text))
        ranked = sorted((c, t) for t, c in counts.items() if c >= min_count)
        ranked.sort(key=lambda ct: (-ct[0], ct[1]))
        return cls([cls.PAD, cls.UNK] + [t for _, t in ranked[:max_size - 2]])

    def encode(self, texts: Sequence[str], max_tokens: int) -> tuple:
        """Token ids [N, max_tokens] (0-padded, the first `max_tokens` tokens kept) and
        lengths [N]; a text with no tokens becomes one <unk> so every length is >= 1."""
        ids = torch.zeros(len(texts), max_tokens, dtype=torch.long)
        lengths = torch.ones(len(texts), dtype=torch.long)
        unk = self.UNK_ID
        for row, text in enumerate(texts):
            encoded = [self.index.get(t, unk) for t in self.tokens(text)[:max_tokens]] or [unk]
            ids[row, :len(encoded)] = torch.tensor(encoded)
            lengths[row] = len(encoded)
        return ids, lengths


class LanguageModel(nn.Module):
    """Next-token prediction with an encoder's last LSTM layer under a linear decoder.
    forward(ids [B, T], lengths [B]) -> mean cross-entropy over the predicted tokens.

    The decoder scores the `predicted` most frequent tokens (ids below it, as Tokenizer
    ranks them) and a rarer next token counts as <unk>: the softmax over the whole
    vocabulary costs most of a step, and rare words teach the encoder little."""

    def __init__(self, encoder: SequenceEncoder, predicted: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = nn.Linear(encoder.output_size, predicted)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        keep = lengths >= 2  # a one-token text predicts nothing
        ids, lengths = ids[keep], lengths[keep]
        inputs, targets, steps = ids[:, :-1], ids[:, 1:], lengths - 1
        rare = targets >= self.decoder.out_features
        targets = targets.masked_fill(rare, Tokenizer.UNK_ID)
        out = self.encoder(inputs, steps.cpu()).output                       # [B, T-1, H]
        valid = torch.arange(inputs.shape[1], device=ids.device) < steps.unsqueeze(1).to(ids.device)
        return F.cross_entropy(self.decoder(out[valid]), targets[valid])

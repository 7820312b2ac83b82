"""Strategy 1: parameter initialisation from a source model, with a report, and
vocabulary remapping."""
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import rnnfast
from rnnfast import transfer
from rnnfast.freeze import frozen_mask

I, H = 5, 6


class Classifier(nn.Module):
    def __init__(self, vocab=11, emb=I, hidden=H, layers=2, classes=3):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        self.lstm = rnnfast.LSTM(emb, hidden, num_layers=layers)
        self.head = nn.Linear(hidden, classes)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_copy_from_torch_lstm_is_complete_and_gives_the_same_outputs():
    source = nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=2)
    target = rnnfast.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=2)
    report = transfer.init_from(target, source)
    assert report.complete and not report.unused and not report.skipped
    assert sorted(report.names("copied")) == sorted(source.state_dict())
    x = torch.randn(7, 3, I)
    torch.testing.assert_close(target(x)[0], source(x)[0], rtol=0, atol=1e-6)


def test_mismatching_layers_are_reported_with_reasons_never_silently_skipped():
    source = Classifier(layers=2, classes=3)
    target = Classifier(layers=3, classes=4)
    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    report = transfer.init_from(target, source.state_dict())
    copied = set(report.names("copied"))
    assert {"embedding.weight", "lstm.weight_ih_l0", "lstm.bias_hh_l1"} <= copied
    assert sorted(report.names("skipped")) == ["head.bias", "head.weight"]
    reasons = {e.target: e.detail for e in report.skipped}
    assert reasons["head.weight"] == "shape mismatch: source (3, 6), target (4, 6)"
    assert sorted(report.missing) == sorted(n for n in target.state_dict() if "_l2" in n)
    assert not report.complete
    # skipped and missing entries keep the target's own initialisation
    for name in report.names("skipped") + report.missing:
        assert torch.equal(target.get_submodule(name.rpartition(".")[0]).get_parameter(name.rpartition(".")[2]),
                           before[name])
    for name in copied:
        assert torch.equal(target.state_dict()[name], source.state_dict()[name])
    text = str(report)
    assert "3 skipped" not in text and "2 skipped" in text and "head.weight <- head.weight: shape mismatch" in text
    with pytest.raises(ValueError, match=r"(?s)incomplete.*head\.weight.*shape mismatch.*lstm\.weight_ih_l2"):
        transfer.init_from(target, source, strict=True)


def test_safetensors_file_with_rename_keeps_masks_dtype_and_requires_grad(tmp_path):
    source = rnnfast.LSTM(I, H, num_layers=2)
    path = tmp_path / "pretrained.safetensors"
    save_file(source.state_dict(), str(path))
    target = Classifier().double()
    rnnfast.freeze(target.lstm, layers=[1], gates="if")
    rnnfast.freeze(target.lstm, params=["weight_ih_l0"])
    mask = frozen_mask(target.lstm, "weight_hh_l1").clone()
    report = transfer.init_from(target, str(path), rename={"": "lstm."})
    assert sorted(report.names("copied")) == sorted("lstm." + n for n in source.state_dict())
    assert all(e.detail == "torch.float32 -> torch.float64" for e in report.copied)
    assert sorted(report.missing) == ["embedding.weight", "head.bias", "head.weight"]
    assert target.lstm.weight_hh_l1.dtype == torch.float64
    assert torch.equal(target.lstm.weight_hh_l1, source.weight_hh_l1.double())
    assert not target.lstm.weight_ih_l0.requires_grad
    assert torch.equal(frozen_mask(target.lstm, "weight_hh_l1"), mask)


def test_rename_by_prefix_and_torch_save_file(tmp_path):
    source = nn.Module()
    source.rnn = nn.LSTM(I, H, num_layers=2)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": source.state_dict()}, path)
    target = Classifier()
    report = transfer.init_from(target, path, rename={"rnn.": "lstm."})
    assert len(report.copied) == 8 and not report.unused
    with pytest.raises(ValueError, match="several source entries onto one target"):
        transfer.init_from(target, {"a.w": torch.zeros(1), "b.w": torch.zeros(1)}, rename={"a.": "x.", "b.": "x."})


def test_no_match_gives_a_rename_hint():
    source = nn.Module()
    source.rnn = nn.LSTM(I, H, num_layers=2)
    report = transfer.init_from(Classifier(), source)
    assert not report.copied and len(report.unused) == 8
    assert report.hint == "no name matched; the names differ by a prefix: try rename={'rnn.': 'lstm.'}"
    assert "hint: " in str(report)


def test_vocabulary_remap_keeps_shared_tokens_and_gives_new_ones_the_mean():
    source_vocab = ["<pad>", "the", "cat", "sat", "on", "mat"]
    target_vocab = ["<pad>", "mat", "dog", "the", "ran", "cat", "on"]
    source = Classifier(vocab=len(source_vocab))
    target = Classifier(vocab=len(target_vocab))
    report = transfer.init_from(target, source, vocab=(source_vocab, target_vocab))
    assert [e.target for e in report.remapped] == ["embedding.weight"]
    assert report.remapped[0].detail == "vocabulary: 5 of 7 tokens kept their source row, 2 new (mean source row)"
    src, tgt = source.embedding.weight, target.embedding.weight
    for row, token in enumerate(target_vocab):
        expected = src[source_vocab.index(token)] if token in source_vocab else src.mean(0)
        assert torch.equal(tgt[row], expected), token
    assert report.complete


def test_vocabulary_remap_of_named_entries_with_dict_vocab_and_zeros():
    source_vocab = {"a": 0, "b": 1, "c": 2}
    target_vocab = {"c": 0, "z": 1, "a": 2, "b": 3}
    weight = torch.arange(6.0).view(3, 2)
    rows, stats = transfer.remap_rows(weight, source_vocab, target_vocab, fill="zeros")
    assert rows.tolist() == [[4.0, 5.0], [0.0, 0.0], [0.0, 1.0], [2.0, 3.0]]
    assert (stats.kept, stats.new) == (3, 1)
    decoder = nn.Linear(2, 4)
    source = {"weight": torch.randn(3, 2), "bias": torch.randn(3)}
    report = transfer.init_from(decoder, source, vocab={"weight": (source_vocab, target_vocab),
                                                        "bias": (source_vocab, target_vocab)})
    assert sorted(report.names("remapped")) == ["bias", "weight"]
    assert decoder.bias[1] == source["bias"].mean() and decoder.bias[0] == source["bias"][2]
    emb = nn.Embedding(4, 2)
    transfer.remap_embedding(emb, weight, source_vocab, target_vocab)
    assert torch.equal(emb.weight[1], weight.mean(0))


def test_vocabulary_errors_are_clear():
    weight = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"source vocabulary has 2 tokens but the source tensor has shape \(3, 2\)"):
        transfer.remap_rows(weight, ["a", "b"], ["a"])
    with pytest.raises(ValueError, match="target vocabulary lists token 'a' more than once"):
        transfer.remap_rows(weight, ["a", "b", "c"], ["a", "a"])
    with pytest.raises(KeyError, match="vocab names entries the target does not have"):
        transfer.init_from(Classifier(), Classifier(), vocab={"emb.weight": (["a"], ["a"])})
    with pytest.raises(ValueError, match="target has no nn.Embedding"):
        transfer.init_from(rnnfast.LSTM(I, H), rnnfast.LSTM(I, H), vocab=(["a"], ["a"]))
    # a target vocabulary that does not fit the target embedding is a reported skip
    report = transfer.init_from(Classifier(vocab=4), Classifier(vocab=3), vocab=(list("abc"), list("abcde")))
    assert report.names("skipped") == ["embedding.weight"]
    assert "target vocabulary of 5 tokens for 4 rows" in report.skipped[0].detail
    with pytest.raises(FileNotFoundError, match="no source weights file"):
        transfer.init_from(Classifier(), "/nonexistent/weights.safetensors")
    with pytest.raises(TypeError, match="source must be an nn.Module, a state_dict"):
        transfer.init_from(Classifier(), 3)

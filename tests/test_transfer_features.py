"""Strategy 3: feature extraction. Pooling ignores padding (mean/max) and takes the last
*valid* step (forward direction) / step 0 (reverse direction); the frozen encoder runs
without a graph; cached features cost one encoder pass for any number of head epochs."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
from rnnfast import transfer

I, H, T = 4, 5, 8
LENGTHS = torch.tensor([8, 3, 5, 1])


def _alone(lstm, x, lengths, batch_first):
    """Each sequence run on its own, unpadded: [len, F] outputs per sequence."""
    outs = []
    for b, n in enumerate(lengths.tolist()):
        seq = x[b, :n] if batch_first else x[:n, b]
        outs.append(lstm(seq.unsqueeze(0) if batch_first else seq.unsqueeze(1))[0].squeeze(0 if batch_first else 1))
    return outs


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_pooling_matches_each_sequence_run_alone(bidirectional, batch_first):
    lstm = rnnfast.LSTM(I, H, num_layers=2, bidirectional=bidirectional, batch_first=batch_first,
                        dtype=torch.float64)
    shape = (len(LENGTHS), T, I) if batch_first else (T, len(LENGTHS), I)
    x = torch.randn(shape, dtype=torch.float64)
    mask = torch.arange(T).unsqueeze(0) >= LENGTHS.unsqueeze(1)        # [B, T] padding
    x[mask if batch_first else mask.t()] = float("nan")                # padding is never read
    encoded = transfer.SequenceEncoder(lstm)(x, LENGTHS)
    alone = _alone(lstm, x, LENGTHS, batch_first)
    half = H
    expected_last = torch.stack([torch.cat([o[-1, :half], o[0, half:]]) if bidirectional else o[-1]
                                 for o in alone])
    expected = {"last": expected_last,
                "mean": torch.stack([o.mean(0) for o in alone]),
                "max": torch.stack([o.amax(0) for o in alone])}
    expected["concat"] = torch.cat([expected["last"], expected["max"], expected["mean"]], -1)
    for mode, want in expected.items():
        got = encoded.pool(mode)
        assert got.shape == (len(LENGTHS), transfer.pooled_width(lstm.hidden_size * (1 + bidirectional), mode))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=mode)
    # "last" is the top layer's final state: h_n[-1] (and h_n[-2] for the forward half)
    top = torch.cat([encoded.h_n[-2], encoded.h_n[-1]], -1) if bidirectional else encoded.h_n[-1]
    torch.testing.assert_close(encoded.pool("last"), top, rtol=0, atol=1e-12)


def test_pool_accepts_packed_sequences_and_plain_outputs():
    lstm = rnnfast.LSTM(I, H, bidirectional=True, dtype=torch.float64)
    x = torch.randn(T, len(LENGTHS), I, dtype=torch.float64)
    packed_out, (h_n, _) = lstm(pack_padded_sequence(x, LENGTHS, enforce_sorted=False))
    last = transfer.pool(packed_out, mode="last", bidirectional=True)
    torch.testing.assert_close(last, torch.cat([h_n[0], h_n[1]], -1), rtol=0, atol=1e-12)
    full = lstm(x)[0]
    torch.testing.assert_close(transfer.pool(full, mode="mean"), full.mean(0), rtol=0, atol=1e-12)


def test_pool_errors():
    out = torch.zeros(T, 2, 2 * H)
    with pytest.raises(ValueError, match=r"pooling must be one of \('last', 'mean', 'max', 'concat'\), got 'sum'"):
        transfer.pool(out, mode="sum")
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 8\] \(the padded length\), got min 0, max 9"):
        transfer.pool(out, torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="lengths has 3 entries but the batch has 2 sequences"):
        transfer.pool(out, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"expected a batched LSTM output \[T, B, F\].*got shape \(8, 10\)"):
        transfer.pool(out[:, 0])
    with pytest.raises(ValueError, match="lengths must be a 1-D integer tensor"):
        transfer.pool(out, torch.tensor([1.0, 2.0]))


def _encoder():
    return transfer.SequenceEncoder(rnnfast.LSTM(I, H, num_layers=2, dropout=0.5, batch_first=True))


def _batches(n=3, batch=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, T, I, generator=g), torch.randint(1, T + 1, (batch,), generator=g),
             torch.randint(0, 2, (batch,), generator=g)) for _ in range(n)]


def test_extractor_runs_without_graph_in_eval_and_restores_training_mode():
    encoder = _encoder()
    extractor = transfer.FeatureExtractor(encoder, pooling="concat")
    x, lengths, _ = _batches(1)[0]
    features = extractor(x, lengths)
    assert features.shape == (4, extractor.feature_size) == (4, 3 * H)
    assert features.grad_fn is None and not features.requires_grad
    assert encoder.training  # put back
    assert all(p.requires_grad for p in encoder.parameters())  # flags untouched
    torch.testing.assert_close(features, extractor(x, lengths), rtol=0, atol=0)  # no dropout
    encoder.eval()
    torch.testing.assert_close(features, encoder(x, lengths).pool("concat"), rtol=0, atol=0)


def test_cached_features_train_a_head_for_many_epochs_with_one_encoder_pass(tmp_path):
    encoder = _encoder()
    calls = []
    encoder.lstm.register_forward_hook(lambda *args: calls.append(1))
    extractor = transfer.FeatureExtractor(encoder, pooling="mean")
    batches = _batches()
    path = tmp_path / "cache" / "train.pt"
    train = extractor.extract(batches, cache=path)
    assert len(calls) == 3 and train.source == "computed" and path.exists()
    assert train.features.shape == (12, H) and train.targets[0].shape == (12,)
    assert torch.equal(train.targets[0], torch.cat([b[2] for b in batches]))

    head = nn.Linear(H, 2)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)

    def full_loss():
        with torch.no_grad():
            return float(F.cross_entropy(head(train.features), train.targets[0]))

    start = full_loss()
    for _ in range(30):  # 30 epochs on the cached features
        for f, y in train.loader(batch_size=4, generator=torch.Generator().manual_seed(0)):
            opt.zero_grad()
            F.cross_entropy(head(f), y).backward()
            opt.step()
    assert len(calls) == 3 and full_loss() < start

    again = extractor.extract(batches, cache=path)       # from disk: no encoder pass
    assert len(calls) == 3 and again.source == "disk"
    assert torch.equal(again.features, train.features) and torch.equal(again.targets[0], train.targets[0])

    with torch.no_grad():                                 # a changed encoder invalidates the cache
        encoder.lstm.weight_hh_l1[0, 0] += 1.0
    changed = extractor.extract(batches, cache=path)
    assert len(calls) == 6 and changed.source == "computed"
    assert not torch.equal(changed.features, train.features)
    other_pooling = transfer.FeatureExtractor(encoder, pooling="max").extract(batches, cache=path)
    assert len(calls) == 9 and other_pooling.source == "computed"


def test_extract_errors():
    extractor = transfer.FeatureExtractor(_encoder())
    with pytest.raises(ValueError, match=r"batch 0: expected a tuple \(x, lengths, \*targets\)"):
        extractor.extract([torch.zeros(2, T, I)])
    x = torch.randn(2, T, I)
    with pytest.raises(ValueError, match=r"batch 0: a target has shape \(3,\) but the batch has 2 sequences"):
        extractor.extract([(x, None, torch.zeros(3))])
    with pytest.raises(TypeError, match="expected a SequenceEncoder, an rnnfast.LSTM"):
        transfer.FeatureExtractor(nn.Linear(3, 3))

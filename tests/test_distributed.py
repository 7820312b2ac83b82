"""DistributedDataParallel over 2 real processes (gloo on CPU) gives the gradients of
one process on the whole batch, with frozen layers and partial freeze masks too (no
unused-parameter errors: frozen parameters are simply not in DDP's buckets); FSDP2
(fully_shard) does the same with sharded parameters. Optimizer steps then leave the
partly frozen entries bit-identical on every rank's shard, and the trained weights match
one process's."""
import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import rnnfast

WORLD = 2
STEPS = 3
TIMEOUT = timedelta(minutes=5)  # rendezvous and every collective, on a loaded 2-core machine


def _model():
    torch.manual_seed(0)
    model = rnnfast.LSTM(5, 8, num_layers=3, bidirectional=True, backend="reference")
    rnnfast.freeze(model, layers=[0])                          # whole layer: no graph
    rnnfast.freeze(model, layers=[1], gates="f", units=[0, 3])  # partial masks
    return model


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 2 * WORLD, 5, generator=g), torch.randn(6, 2 * WORLD, 16, generator=g)


def _loss(model, x, target):
    out, _ = model(x)
    return ((out - target) ** 2).mean()


def _train(model, wrapped, x, target):
    """STEPS AdamW steps (weight decay moves zero-gradient entries: the freeze hook must
    put the frozen ones back); returns the first step's gradients."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=0.05, weight_decay=0.1)
    for step in range(STEPS):
        optimizer.zero_grad()
        _loss(wrapped, x, target).backward()
        if step == 0:
            first_grads = {n: _whole(p.grad) for n, p in model.named_parameters()
                           if p.requires_grad}
        optimizer.step()
    return first_grads


def _whole(t):
    """FSDP keeps parameters and gradients sharded (DTensors): gather them on every rank."""
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu()


def _worker(rank, init_method, result_file, wrapper):
    nccl = wrapper == "ddp-nccl"
    device = torch.device("cuda", rank) if nccl else torch.device("cpu")
    if nccl:
        torch.cuda.set_device(device)
    # A file store in the test's tmp_path: no TCP port to pick, so none another process can take.
    dist.init_process_group("nccl" if nccl else "gloo", init_method=init_method, rank=rank,
                            world_size=WORLD, timeout=TIMEOUT)
    try:
        model = _model().to(device)
        if wrapper.startswith("ddp"):
            wrapped = torch.nn.parallel.DistributedDataParallel(model)
        else:
            from torch.distributed.fsdp import fully_shard
            wrapped = fully_shard(model)
        x, target = (t.to(device) for t in _data())
        half = x.shape[1] // WORLD
        rows = slice(rank * half, (rank + 1) * half)
        grads = _train(model, wrapped, x[:, rows], target[:, rows])
        params = {n: _whole(p) for n, p in model.named_parameters()}
        if rank == 0:
            torch.save((grads, params), result_file)
        dist.barrier()  # neither rank tears down while the other still communicates
    finally:
        dist.destroy_process_group()
    # DTensor's caches keep FSDP's DeviceMesh, and through it the gloo group, alive after
    # destroy_process_group: its worker and socket threads would still be running through
    # interpreter teardown and the C++ static destructors. Leave without that teardown.
    os._exit(0)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available in this build")
@pytest.mark.parametrize("wrapper", [
    "ddp", "fsdp",
    pytest.param("ddp-nccl", marks=pytest.mark.skipif(
        torch.cuda.device_count() < WORLD or not dist.is_nccl_available(),
        reason="NCCL needs a CUDA device per process (2 GPUs)")),
])
def test_two_processes_match_one_process(tmp_path, wrapper):
    result_file = tmp_path / "result.pt"
    init_method = (tmp_path / "rendezvous").as_uri()
    mp.spawn(_worker, args=(init_method, str(result_file), wrapper), nprocs=WORLD, join=True)
    dist_grads, dist_params = torch.load(result_file)

    model = _model()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = _train(model, model, *_data())
    assert set(dist_grads) == set(grads) and "weight_hh_l0" not in grads
    for name, grad in grads.items():
        torch.testing.assert_close(dist_grads[name], grad, msg=lambda m: f"{name}: {m}")
    for name, param in model.named_parameters():
        torch.testing.assert_close(dist_params[name], param.detach(),
                                   msg=lambda m: f"{name} after {STEPS} steps: {m}")

    mask = rnnfast.frozen_mask(model, "weight_ih_l1")
    assert torch.all(dist_grads["weight_ih_l1"][mask] == 0)
    for name in ("weight_ih_l1", "weight_hh_l1_reverse", "bias_ih_l1"):
        mask = rnnfast.frozen_mask(model, name)
        assert mask.any() and not mask.all()
        assert torch.equal(dist_params[name][mask], initial[name][mask]), name
        assert not torch.equal(dist_params[name][~mask], initial[name][~mask]), name
    assert torch.equal(dist_params["weight_ih_l0"], initial["weight_ih_l0"])

"""DistributedDataParallel over 2 real processes (gloo on CPU) gives the gradients of
one process on the whole batch, with frozen layers and partial freeze masks too (no
unused-parameter errors: frozen parameters are simply not in DDP's buckets); FSDP2
(fully_shard) does the same with sharded parameters."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import rnnfast

WORLD = 2


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


def _worker(rank, port, result_file, wrapper):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    nccl = wrapper == "ddp-nccl"
    device = torch.device("cuda", rank) if nccl else torch.device("cpu")
    if nccl:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if nccl else "gloo", rank=rank, world_size=WORLD)
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
        _loss(wrapped, x[:, rows], target[:, rows]).backward()
        # FSDP keeps each gradient sharded (a DTensor): gather it on every rank.
        grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).cpu()
                 for n, p in model.named_parameters() if p.requires_grad}
        if rank == 0:
            torch.save(grads, result_file)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available in this build")
@pytest.mark.parametrize("wrapper", [
    "ddp", "fsdp",
    pytest.param("ddp-nccl", marks=pytest.mark.skipif(
        torch.cuda.device_count() < WORLD or not dist.is_nccl_available(),
        reason="NCCL needs a CUDA device per process (2 GPUs)")),
])
def test_two_processes_match_one_process(tmp_path, wrapper):
    result_file = tmp_path / "grads.pt"
    mp.spawn(_worker, args=(_free_port(), str(result_file), wrapper), nprocs=WORLD, join=True)
    ddp_grads = torch.load(result_file)

    model = _model()
    _loss(model, *_data()).backward()
    expected = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert set(ddp_grads) == set(expected) and "weight_hh_l0" not in expected
    for name, grad in expected.items():
        torch.testing.assert_close(ddp_grads[name], grad, msg=lambda m: f"{name}: {m}")
    mask = rnnfast.frozen_mask(model, "weight_ih_l1")
    assert torch.all(ddp_grads["weight_ih_l1"][mask] == 0)

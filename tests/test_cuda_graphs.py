"""CUDA graphs: a whole training step with rnnfast.LSTM (forward, backward, optimizer
step) is captured once and replayed on new data, giving what eager steps give. This
needs the launch path free of host syncs and host-to-device copies (dense input: the
Triton launcher builds no step tables for it). Skips without a CUDA device."""
import pytest
import torch
from torch.testing import assert_close

import rnnfast
from rnnfast.backends import available_backends
from conftest import requires_cuda

CUDA_BACKENDS = [name for name, reason in available_backends().items() if reason is None]


def _step(model, optimizer, x, target):
    optimizer.zero_grad(set_to_none=False)
    out, _ = model(x)
    loss = (out - target).square().mean()
    loss.backward()
    optimizer.step()
    return loss


@requires_cuda
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_training_step_captured_and_replayed(backend):
    torch.manual_seed(0)
    device = torch.device("cuda")
    eager = rnnfast.LSTM(8, 16, num_layers=2, device=device, backend=backend)
    graphed = rnnfast.LSTM(8, 16, num_layers=2, device=device, backend=backend)
    graphed.load_state_dict(eager.state_dict())
    opt_eager = torch.optim.Adam(eager.parameters(), lr=1e-2, capturable=True)
    opt_graphed = torch.optim.Adam(graphed.parameters(), lr=1e-2, capturable=True)
    batches = [(torch.randn(12, 4, 8, device=device), torch.randn(12, 4, 16, device=device))
               for _ in range(4)]
    static_x, static_target = (t.clone() for t in batches[0])

    # Warm up on a side stream (allocations, Triton compilation), as CUDA graphs require;
    # the warm-up steps are undone by reloading the weights and optimizer state.
    state = ({k: v.clone() for k, v in graphed.state_dict().items()}, opt_graphed.state_dict())
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            _step(graphed, opt_graphed, static_x, static_target)
    torch.cuda.current_stream().wait_stream(side)
    graphed.load_state_dict(state[0])
    opt_graphed.load_state_dict(state[1])

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = _step(graphed, opt_graphed, static_x, static_target)

    for x, target in batches:
        expected = _step(eager, opt_eager, x, target)
        static_x.copy_(x)
        static_target.copy_(target)
        graph.replay()
        assert_close(static_loss, expected)
    for a, b in zip(graphed.parameters(), eager.parameters()):
        assert_close(a, b)

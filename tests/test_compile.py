"""torch.compile(fullgraph=True) traces through rnnfast.LSTM (the layer is a
torch.library op with a fake implementation): same outputs and gradients as eager."""
import torch
from torch.testing import assert_close

import rnnfast


def test_fullgraph_compile_matches_eager():
    torch.manual_seed(0)
    model = rnnfast.LSTM(5, 8, num_layers=2, bidirectional=True, proj_size=3)
    x = torch.randn(7, 3, 5, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    results = []
    for run in (model, compiled):
        out, (h, c) = run(x)
        loss = out.square().sum() + h.sum() + c.sum()
        results.append([out, h, c, *torch.autograd.grad(loss, [x, *model.parameters()])])
    for a, b in zip(*results):
        assert_close(a, b)

"""PyTorch's own tests of nn.LSTM and nn.LSTMCell, run on rnnfast's classes.

The samples and error inputs are those of the LSTM and LSTMCell ModuleInfo entries in
the installed torch's torch.testing._internal.common_modules; the checks are those of
torch's test/test_modules.py (TestModule.test_forward, test_grad, test_gradgrad,
test_errors), with torch's testing gradcheck/gradgradcheck, whose batched checks
(vmap over the backward) are on. test_grad/test_gradgrad check the total derivative,
then each parameter alone with the others frozen (the transfer-learning case), like
torch's _test_gradients_helper. Beyond torch's own checks, every sample's outputs and
gradients are compared with nn.LSTM / nn.LSTMCell holding the same weights.

To stay within about two minutes of CPU CI, the default run checks every sample's
forward and total derivative on the reference backend, each parameter alone on the
samples in EACH_PARAMETER (every parameter role, both layers, with and without hx; the
reverse direction's parameters are in the bidirectional samples' total derivative),
and a few samples on the Triton kernels, which run in the CPU interpreter here (TRITON). RNNFAST_TORCH_SUITE=full runs torch's whole protocol: every
sample, both training modes, each parameter alone, on every backend.
"""
import os

import pytest
import torch
from torch import nn
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db
from torch.testing._internal.common_utils import freeze_rng_state, gradcheck, gradgradcheck
from torch.utils._pytree import tree_flatten, tree_leaves, tree_unflatten

import rnnfast
from conftest import BACKENDS

INFOS = {info.module_cls: info for info in module_db if info.module_cls in (nn.LSTM, nn.LSTMCell)}
OURS = {nn.LSTM: rnnfast.LSTM, nn.LSTMCell: rnnfast.LSTMCell}


def _samples(torch_cls, dtype=torch.float64, requires_grad=True, training=True):
    info = INFOS[torch_cls]
    with freeze_rng_state():
        torch.manual_seed(0)
        return info.module_inputs_func(info, device="cpu", dtype=dtype,
                                       requires_grad=requires_grad, training=training)


def _error_inputs(torch_cls, dtype=torch.float32):
    info = INFOS[torch_cls]
    with freeze_rng_state():
        torch.manual_seed(0)
        return info.module_error_inputs_func(info, device="cpu", dtype=dtype,
                                             requires_grad=False, training=True)


SAMPLES = [(cls, i) for cls in INFOS for i in range(len(_samples(cls)))]
ERRORS = [(cls, i) for cls in INFOS for i in range(len(_error_inputs(cls)))]
FULL = os.environ.get("RNNFAST_TORCH_SUITE") == "full"
# LSTM samples have 2 layers; 16: bias, no hx; 19: bias, proj_size=2, hx given.
EACH_PARAMETER = [(nn.LSTMCell, 0), (nn.LSTMCell, 1), (nn.LSTM, 16), (nn.LSTM, 19)]
# The interpreter runs a 2-layer bidirectional sample's gradcheck in about a minute:
# the default run keeps to a cell, a one-directional LSTM (1: no bias, hx given) and,
# forward only, a bidirectional one with projection (7).
TRITON = {"forward": [(nn.LSTMCell, 0), (nn.LSTM, 1), (nn.LSTM, 7)],
          "grad": [(nn.LSTMCell, 0), (nn.LSTM, 1)], "gradgrad": [(nn.LSTMCell, 0)]}


def _ids(case):
    cls, index = case
    return f"{cls.__name__}-{index}"


def _cases(test):
    """(case, backend) parameters of a test."""
    cases = []
    for backend in BACKENDS:
        chosen = SAMPLES if FULL or backend == "reference" else TRITON[test]
        cases += [pytest.param(case, backend, id=f"{_ids(case)}-{backend}") for case in chosen]
    return cases


def _module(torch_cls, module_input, backend, training=True):
    """rnnfast's module for a sample's constructor input, in float64 like torch's test."""
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    torch.manual_seed(0)
    module = OURS[torch_cls](*args, **kwargs, backend=backend).to(torch.float64)
    return module.train(training)


def _fresh(tree):
    """The sample's forward input with new leaves, so each module gets its own graph."""
    return torch.utils._pytree.tree_map(
        lambda t: t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t,
        tree)


@pytest.mark.parametrize("case, backend", _cases("forward"))
def test_forward_matches_torch_and_the_reference_fn(case, backend):
    """Outputs and gradients as nn.LSTM/nn.LSTMCell with the same weights; and the
    sample's reference_fn (the unbatched input run as a batch of one), as test_forward;
    in both training modes (the Triton kernels in training mode only, unless full)."""
    for training in (True, False) if FULL or backend == "reference" else (True,):
        _check_forward(*case, backend, training)


def _check_forward(torch_cls, index, backend, training):
    module_input = _samples(torch_cls, training=training)[index]
    ours = _module(torch_cls, module_input, backend, training)
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    theirs = torch_cls(*args, **kwargs).to(torch.float64).train(training)
    theirs.load_state_dict(ours.state_dict())
    results = []
    for module in (ours, theirs):
        inputs = _fresh(module_input.forward_input.args)
        outputs = tree_leaves(module(*inputs))
        leaves = [t for t in tree_leaves(inputs) if t.requires_grad] + list(module.parameters())
        loss = sum((out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
                   for out in outputs)
        results.append(outputs + list(torch.autograd.grad(loss, leaves)))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected)
    with freeze_rng_state():
        expected = module_input.reference_fn(ours, *module_input.forward_input.args)
    torch.testing.assert_close(ours(*module_input.forward_input.args), expected)


def _gradient_checks(torch_cls, index, backend, check):
    """torch's TestModule._test_gradients_helper: the check on (inputs, all parameters),
    then (EACH_PARAMETER samples) on (inputs, one parameter) for each parameter with the
    others not requiring grad; in both training modes under RNNFAST_TORCH_SUITE=full."""
    each_parameter = FULL or (torch_cls, index) in EACH_PARAMETER
    for training in (True, False) if FULL else (True,):
        module_input = _samples(torch_cls, training=training)[index]
        module = _module(torch_cls, module_input, backend, training)
        input_args = module_input.forward_input.args
        params = tuple(module.parameters())
        flat_spec = None

        def fn_to_check(*flat_input_and_params):
            new_input_args = tree_unflatten(flat_input_and_params, flat_spec)[:len(input_args)]
            with freeze_rng_state():
                return tree_leaves(module(*new_input_args))

        flat_input, flat_spec = tree_flatten(input_args + params)
        assert check(fn_to_check, flat_input)
        if not each_parameter:
            continue
        for p in params:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
            flat_input, flat_spec = tree_flatten(input_args + (p,))
            assert check(fn_to_check, flat_input), p.shape
            p.requires_grad_(False)


@pytest.mark.parametrize("case, backend", _cases("grad"))
def test_grad(case, backend):
    _gradient_checks(*case, backend, gradcheck)


@pytest.mark.parametrize("case, backend", _cases("gradgrad"))
def test_gradgrad(case, backend):
    _gradient_checks(*case, backend, gradgradcheck)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ERRORS, ids=_ids)
def test_errors(case, dtype):
    """Each error input raises torch's exception type with a message matching torch's
    regex, at construction or in forward as torch does."""
    torch_cls, index = case
    error_input = _error_inputs(torch_cls, dtype)[index]
    module_input = error_input.module_error_input
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    if error_input.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
        with pytest.raises(error_input.error_type, match=error_input.error_regex):
            OURS[torch_cls](*args, **kwargs)
    else:
        module = OURS[torch_cls](*args, **kwargs)
        with pytest.raises(error_input.error_type, match=error_input.error_regex):
            module(*module_input.forward_input.args, **module_input.forward_input.kwargs)

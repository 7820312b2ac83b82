import os

import pytest
import torch

# Without a GPU the Triton kernels are tested in Triton's CPU interpreter. The switch
# must be set before the kernels are defined (rnnfast imports them on first use).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from rnnfast import backends  # noqa: E402


def _backends_running(device: str) -> list[str]:
    """The backends usable here that run fp32 layers on `device` tensors."""
    return [name for name, reason in backends.available_backends().items()
            if reason is None and backends.get(name).unsupported_reason(torch.device(device),
                                                                        torch.float32) is None]


# Backends for the backend-agnostic tests, which run on CPU tensors: every one usable
# here on CPU (Triton only in its interpreter; on a GPU machine tests/test_triton.py
# runs the compiled kernels on CUDA).
BACKENDS = _backends_running("cpu")

# Gradient slots of a backend backward's `needs` argument.
NEEDS = ("dx", "dh0", "dc0", "dW_ih", "dW_hh", "db_ih", "db_hh", "dW_hr")


@pytest.fixture
def needs_spy(monkeypatch):
    """Records, for every call of a backend's backward (any registered one: "auto" runs
    CPU layers on the C++ backend where it is built), which gradients it was asked
    for: a list of {slot: bool} dicts (slots as in NEEDS)."""
    import dataclasses
    import inspect
    calls = []
    # Every backend takes the reference's arguments (most as *args), so its positions.
    position = list(inspect.signature(backends.reference.backward).parameters).index("needs")

    def spy(original):
        def backward(*args):
            calls.append(dict(zip(NEEDS, args[position])))
            return original.backward(*args)
        return dataclasses.replace(original, backward=backward)

    for name, original in list(backends._REGISTRY.items()):
        monkeypatch.setitem(backends._REGISTRY, name, spy(original))
    return calls


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Backends for the tests on CUDA tensors: every one that runs them here. Without a GPU
# ["reference"], so that those tests' CUDA cases show as skipped.
CUDA_BACKENDS = _backends_running("cuda") if torch.cuda.is_available() else ["reference"]
# Where a test runs a layer on a backend of these, a warning that it handed the layer to
# another backend is an error: the test would compare the reference with itself.
kernels_must_run = pytest.mark.filterwarnings("error:rnnfast backend '")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

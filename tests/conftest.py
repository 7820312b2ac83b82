import pytest
import torch

from rnnfast.backends import available_backends

# Backends to run the backend-agnostic tests on: every one usable in this process.
BACKENDS = [name for name, reason in available_backends().items() if reason is None]

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

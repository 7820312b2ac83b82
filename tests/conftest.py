import os

import pytest
import torch

# Without a GPU the Triton kernels are tested in Triton's CPU interpreter. The switch
# must be set before the kernels are defined (rnnfast imports them on first use).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from rnnfast import backends  # noqa: E402

# Backends for the backend-agnostic tests, which run on CPU tensors: every one usable
# here on CPU (Triton only in its interpreter; on a GPU machine tests/test_triton.py
# runs the compiled kernels on CUDA).
BACKENDS = [name for name, reason in backends.available_backends().items()
            if reason is None and backends.get(name).unsupported_reason(torch.device("cpu"),
                                                                        torch.float32) is None]

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

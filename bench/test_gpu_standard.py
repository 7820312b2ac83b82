"""GPU: the standard cases of DESIGN.md §8 (fastrnns, FlashRNN's dense case, the
B x H x T sweep, the AWD-LSTM-sized fine-tune) for every provider, in fp32/bf16/fp16,
as pytest-benchmark tests. Cases, providers, correctness check and step functions are
rnnfast.bench's, the same as `python -m rnnfast bench` uses.

    python -m pytest bench/test_gpu_standard.py --benchmark-json=out.json
    python -m pytest bench/test_gpu_standard.py -k "fastrnns and fwdbwd"

Memory is not a pytest-benchmark quantity: `python -m rnnfast bench` reports it.
"""
import pytest
import torch

from rnnfast.bench import providers as P, runner
from rnnfast.bench.cases import TIME_MODES, standard_cases

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="GPU suite: needs a CUDA device (the CPU suite is bench/test_cpu_*.py "
                                       "and `python -m rnnfast bench --device cpu`)")

DEVICE = torch.device("cuda")
CASES = [(c, m) for c in standard_cases(DEVICE) for m in c.modes if m in TIME_MODES]


def _id(item):
    case, mode = item
    return f"{case.name} {mode}".replace(" ", "-")


@pytest.fixture(scope="module")
def setups():
    return {}  # case name -> (reference, inputs, gradient outputs)


@pytest.mark.parametrize("provider", P.KNOWN_PROVIDERS)
@pytest.mark.parametrize("item", CASES, ids=[_id(i) for i in CASES])
def test_standard(benchmark, setups, item, provider):
    case, mode = item
    chosen = {p.name: p for p in P.all_providers(DEVICE, case.torch_dtype)}[provider]
    if chosen.skip:
        pytest.skip(f"{provider}: {chosen.skip}")
    if chosen.unsupported_modes and mode in chosen.unsupported_modes:
        pytest.skip(f"{provider}: {chosen.unsupported_modes[mode]}")
    if case.name not in setups:
        setups[case.name] = (runner.make_reference(case, DEVICE), *runner.make_inputs(case, DEVICE))
    ref, xs, gouts = setups[case.name]
    model = chosen.build(ref)
    if provider != P.BASELINE:
        diff = runner.check(model, ref, xs[0], gouts[0])
        tol = runner.tolerance(case.torch_dtype, DEVICE)
        assert diff <= tol, f"{provider} disagrees with nn.LSTM on {case.name}: {diff:.2e} > {tol:g}"
    runner.set_trainable(model, mode, case.layers)
    prepare, timed = runner.make_step(model, mode, xs, gouts, DEVICE)

    def setup():
        prepare()
        runner.sync(DEVICE)

    def step():
        timed()
        runner.sync(DEVICE)  # pytest-benchmark times on the host: wait for the GPU

    benchmark.group = f"{case.name} {mode}"
    benchmark.pedantic(step, setup=setup, rounds=20, warmup_rounds=3)

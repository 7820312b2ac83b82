"""The process that runs verify's cases: `python -m rnnfast.verify.worker KIND CASES`.

CASES is a JSON list of case dicts; for each, in order, one JSON line on stdout: the
case with its result merged in (status first of all). KIND says what a case is:
  smoke     parity of one backend x dtype x shape against nn.LSTM (smoke.check)
  exercise  forward + backward of rnnfast alone, for compute-sanitizer (smoke.exercise)
  bench     one rnnfast.bench case, every provider, through rnnfast.bench.runner
  probe     the latency models' figures on this GPU (rnnfast.backends.probe.measure)
The parent (child.run_cases) holds each case to a time limit and starts a new worker
for the rest when one hangs or dies. After a failed case on a GPU the worker leaves
with child.RESTART_EXIT_CODE: a CUDA error can leave the context unusable, and the
next case deserves a clean process.
"""
from __future__ import annotations

import json
import sys
import time

import torch

from rnnfast import backends
from rnnfast.verify import smoke
from rnnfast.verify.child import RESTART_EXIT_CODE


def _backend_case(check):
    """A case runner for `check(backend, dtype, shape, device)`; a backend that cannot
    run in this process (say, rnnfast._C not built) makes the case UNAVAILABLE."""
    def run(case: dict, device: torch.device) -> dict:
        reason = backends.available_backends()[case["backend"]]
        if reason is not None:
            return {"status": "UNAVAILABLE", "reason": reason}
        return check(case["backend"], case["dtype"], smoke.Shape.from_dict(case["shape"]), device)
    return run


def _bench(case: dict, device: torch.device) -> dict:
    from rnnfast.bench import cases, providers, runner
    bench_case = cases.Case(**{**case["case"], "modes": tuple(case["case"]["modes"])})
    chosen = providers.select(providers.all_providers(device, bench_case.torch_dtype), case["providers"])
    with smoke.tf32(case["tf32"]):
        rows = runner.run_case(bench_case, chosen, device, case["repeats"], case["warmup"])
    for row in rows:
        row["tf32"] = case["tf32"]
    failed = [r for r in rows if r["status"].startswith(("failed", "error"))]
    return {"status": "FAIL" if failed else "PASS", "rows": rows}


def _probe(case: dict, device: torch.device) -> dict:
    from rnnfast.backends import probe
    return {"status": "PASS", "figures": probe.measure(device)}


KINDS = {"smoke": _backend_case(smoke.check), "exercise": _backend_case(smoke.exercise),
         "bench": _bench, "probe": _probe}


def main(argv: list[str]) -> int:
    kind, cases = argv[0], json.loads(argv[1])
    for case in cases:
        device = torch.device(case["device"])
        started = time.perf_counter()
        try:
            result = KINDS[kind](case, device)
        except Exception as error:  # reported as the case's failure; the run goes on
            result = smoke.failure(error)
        result.setdefault("seconds", round(time.perf_counter() - started, 2))
        print(json.dumps({**case, **result}), flush=True)
        if "error" in result and device.type == "cuda":
            return RESTART_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

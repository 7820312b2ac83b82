"""`python -m rnnfast bench`: the standard suite for this device, or one shape of yours."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..cli_args import UsageError, device as device_arg, nonnegative_int, positive_int
from ..progress import Progress
from . import cases as cases_mod, floor, providers as providers_mod, report, runner


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=device_arg, default="auto",
                   help="auto (cuda if present, default), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", type=_list, default=None,
                   help="comma list of fp32, bf16, fp16, fp64 (default: fp32,bf16,fp16 on GPU "
                        "for the standard suite, fp32 otherwise)")
    p.add_argument("--batch", type=int, help="your own shape: batch (with --hidden/--seq)")
    p.add_argument("--hidden", type=int, help="your own shape: hidden size")
    p.add_argument("--seq", type=int, help="your own shape: sequence length")
    p.add_argument("--input", type=int, help="your own shape: input size (default: --hidden)")
    p.add_argument("--layers", type=int, default=1, help="your own shape: layers (default 1)")
    p.add_argument("--mode", type=_list, default=None,
                   help=f"comma list of {', '.join(cases_mod.MODES)} (default: each case's own; "
                        "your shape: fwd,fwdbwd,bwd,bias_only,memory, + frozen_layers with --layers>1)")
    p.add_argument("--providers", type=_list, default=None,
                   help=f"comma list of {', '.join(providers_mod.KNOWN_PROVIDERS)} (default: all; "
                        "torch, the baseline, is always included)")
    p.add_argument("--cases", type=_list, default=None,
                   help=f"standard suite groups: {', '.join(cases_mod.GROUPS)} (default: all)")
    p.add_argument("--repeats", type=positive_int, default=None, help="timed repeats (default 20 GPU, 7 CPU)")
    p.add_argument("--warmup", type=nonnegative_int, default=None, help="untimed repeats first (default 5 GPU, 2 CPU)")
    p.add_argument("--out", help="output folder (default bench/results/<device-slug>/)")
    p.add_argument("--no-plots", action="store_true", help="JSON and CSV only")
    p.add_argument("--no-floor", action="store_true", help="skip measuring the hardware limits")
    p.add_argument("--explain", action="store_true",
                   help="no timing: print each case's Triton plan on sm_90, its compiled resources "
                        "and modelled time (skipped without triton), then its CUDA plan and "
                        "modelled time, against cuDNN (no GPU needed)")


def cases_from_args(args, device, default_groups=None) -> list:
    """The cases the arguments ask for: the user's --batch/--hidden/--seq shape, or the
    standard suite of `device` (its --cases groups, else `default_groups`, else all),
    kept to --mode. Raises ValueError naming what is wrong."""
    bad = [d for d in args.dtype or [] if d not in cases_mod.DTYPES]
    if bad:
        raise ValueError(f"unknown dtype {bad[0]!r}; expected some of {', '.join(cases_mod.DTYPES)}")
    custom = any(v is not None for v in (args.batch, args.hidden, args.seq, args.input))
    if custom:
        if args.cases:
            raise ValueError("--cases picks standard groups; it does not combine with --batch/--hidden/--seq")
        def given(value, default):
            return default if value is None else value
        H = given(args.hidden, 256)
        modes = args.mode or (["fwd", "fwdbwd", "bwd", "bias_only", "memory"]
                              + (["frozen_layers"] if args.layers > 1 else []))
        return [cases_mod.custom_case(given(args.seq, 50), given(args.batch, 32), H, given(args.input, H),
                                      args.layers, dt, modes) for dt in (args.dtype or ["fp32"])]
    suite = cases_mod.standard_cases(device, args.dtype, args.cases or default_groups)
    if args.mode:
        cases_mod.check_modes(args.mode, 2)
        suite = [c.__class__(**{**c.__dict__, "modes": tuple(m for m in c.modes if m in args.mode)})
                 for c in suite]
        suite = [c for c in suite if c.modes]
        if not suite:
            raise ValueError(f"no standard case runs the modes {args.mode}")
    return suite


def run(args, argv=None) -> int:
    """Raises UsageError for bad input, before anything runs."""
    if args.explain:
        from .explain import explain
        return explain(args)
    argv = list(sys.argv[1:] if argv is None else argv)
    device = args.device
    gpu = device.type == "cuda"
    try:
        if args.providers:
            providers_mod.select([], args.providers)  # validates the names
        suite = cases_from_args(args, device)
    except ValueError as e:
        raise UsageError(str(e), "python -m rnnfast bench") from None

    repeats = args.repeats or (20 if gpu else 7)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 2)
    out_dir = Path(args.out) if args.out else Path("bench/results") / report.slug(device)
    env = report.environment(device, argv)
    print(f"rnnfast bench on {env['device']} | torch {env['torch']}"
          + (f" | CUDA {env['cuda']} cuDNN {env['cudnn']} driver {env['driver']}" if gpu else "")
          + f" | triton {env['triton']} | {repeats} repeats after {warmup} warm-up")

    started = time.perf_counter()
    rates = {}
    dtypes = list(dict.fromkeys(c.dtype for c in suite))
    if not args.no_floor:
        for dt in dtypes:
            r = floor.measure_rates(device, cases_mod.DTYPES[dt])
            rates[dt] = r.as_dict()
            print(f"limits ({dt}): matmul {r.matmul_flops / 1e12:.3g} TFLOP/s, copy bandwidth "
                  f"{r.bandwidth / 1e9:.3g} GB/s, per-step launch latency {r.step_latency * 1e6:.3g} us")

    provider_lists = {dt: providers_mod.select(providers_mod.all_providers(device, cases_mod.DTYPES[dt]),
                                               args.providers) for dt in dtypes}
    for dt, ps in provider_lists.items():
        for p in ps:
            if p.skip:
                print(f"  {p.name:<18} ({dt}) {p.skip}")
    total = sum(runner.run_count(c, provider_lists[c.dtype]) for c in suite)
    progress = Progress(total)
    rows = []
    try:
        for case in suite:
            floors = None
            if case.dtype in rates:
                rate = floor.Rates(**rates[case.dtype])
                floors = lambda c, m, rate=rate: floor.case_floor(c, m, rate)  # noqa: E731
            rows += runner.run_case(case, provider_lists[case.dtype], device, repeats, warmup,
                                    floors, progress)
    finally:
        progress.close()
    print(report.table(rows, device))
    paths = report.write(out_dir, rows, env, rates, plots=not args.no_plots)
    print(f"\nwrote {', '.join(str(p) for p in paths[:2])}"
          + (f" and {len(paths) - 2} plots under {out_dir / 'plots'}" if len(paths) > 2 else "")
          + f" ({time.perf_counter() - started:.0f} s)")
    failed = [r for r in rows if r["status"].startswith(("failed", "error"))]
    return 1 if failed else 0

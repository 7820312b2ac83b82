"""`python -m rnnfast demo`: the transfer-learning experiments, with a progress bar,
a results table on stdout and results.json, report.md and PNG plots in --out."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

from ..bench.report import environment, slug
from ..cli_args import UsageError, device as device_arg, positive_int
from ..progress import Progress, duration
from . import data, report, sentiment, timeseries

PROG = "python -m rnnfast demo"

TASKS = ("timeseries", "text")
RUN_OVERHEAD_S = 0.05  # a run's model building, data preparation and evaluation beyond its steps

# Each budget: (seeds, SeriesConfig changes, TextConfig changes). "default" finishes in
# about 7 minutes on a 2-core AVX-512 CPU with the C++ cpu backend (2026-12-05: the
# time-series lr/epoch selection, the GloVe x recipe text ablation, its language model
# and TF-IDF baseline); "tiny" is the smoke test's end-to-end run.
BUDGETS = {
    "tiny": (1, dict(epochs=2, source_steps=4, feature_epochs=2),
             dict(vocab=400, hidden=16, lm_epochs=1, lm_predicted=100, target_texts=400,
                  min_steps=2, min_epochs=1, max_epochs=1)),
    "default": (3, {}, {}),
    "full": (5, dict(epochs=300, source_steps=600, feature_epochs=500),
             dict(lm_epochs=16)),
}


def _list(text: str) -> list:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {TASKS}")
    p.add_argument("--budget", choices=tuple(BUDGETS), default="default",
                   help="tiny: seconds (smoke test); default: about 7 min on a 2-core CPU (it prints "
                        "its estimate first); full: more seeds, data and epochs")
    p.add_argument("--seeds", type=positive_int, default=None, help="number of seeds (default: the budget's)")
    p.add_argument("--pairs", default=None,
                   help="time-series 'Source->Target' (or 'Source → Target') pairs of UCR/UEA "
                        "classification sets: those shipped in aeon, or under --data-root "
                        f"(default: {','.join(timeseries.DEFAULT_PAIRS)})")
    p.add_argument("--target", default=None,
                   help="instead of --pairs: one time-series target set, with sources from --sources")
    p.add_argument("--sources", default=None,
                   help="with --target: auto (default: the nearest set by DTW between class "
                        "prototypes, rnnfast.transfer.rank_sources), auto:K (the K nearest) or set names")
    p.add_argument("--strategies", default=",".join(timeseries.STRATEGIES),
                   help=f"time-series strategies, from {tuple(timeseries.STRATEGIES)}")
    p.add_argument("--methods", default=",".join(sentiment.METHODS),
                   help=f"text methods, from {tuple(sentiment.METHODS)}")
    p.add_argument("--fractions", default=",".join(str(f) for f in sentiment.DEFAULT_FRACTIONS),
                   help="text: fractions of the review labels for the learning curves, in (0, 1]")
    p.add_argument("--device", type=device_arg, default="auto",
                   help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--no-torch-compare", action="store_true",
                   help="skip the same runs on torch.nn.LSTM")
    p.add_argument("--data-root", default=None,
                   help="folder with <Name>/<Name>_TRAIN.ts and _TEST.ts (default: aeon's copy)")
    p.add_argument("--out", default=None, help="output folder (default demo-results/<device>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _choices(text: str, allowed, what: str) -> list:
    chosen = _list(text)
    unknown = [c for c in chosen if c not in allowed]
    if not chosen or unknown:
        raise ValueError(f"--{what} must be a comma-separated subset of {tuple(allowed)}, got {text!r}")
    return chosen


def _fractions(text: str) -> list:
    try:
        fractions = [float(f) for f in _list(text)]
    except ValueError:
        fractions = []
    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise ValueError(f"--fractions must be numbers in (0, 1], got {text!r}")
    return fractions


def expected_seconds(series_plan: list, text_plan: list, series_config, text_config,
                     device: torch.device) -> tuple:
    """Each planned run's expected seconds on this machine as it is now (its counted
    training steps times a calibrated step of the same model: a few steps timed on
    random data), and the line that says the total."""
    started = time.perf_counter()
    step_s = {}
    if series_plan:
        step_s.update(timeseries.calibrate({k for run in series_plan for k in run}, series_config, device))
    if text_plan:
        step_s.update(sentiment.calibrate({k for run in text_plan for k in run}, text_config, device))
    seconds = [sum(steps * step_s[kind] for kind, steps in run.items()) + RUN_OVERHEAD_S
               for run in series_plan + text_plan]
    named = {("series", "rnnfast", series_config.hidden): "a time-series step",
             ("text", "rnnfast"): "a text step", ("text lm",): "a language-model step"}
    steps = ", ".join(f"{step_s[k] * 1e3:.{1 if step_s[k] < 0.01 else 0}f} ms {name}"
                      for k, name in named.items() if k in step_s)
    line = (f"expected duration on this machine: about {duration(sum(seconds))} (calibrated in "
            f"{time.perf_counter() - started:.1f} s: {steps}); a busy machine takes longer{_busy_now()}")
    return seconds, line


def _busy_now() -> str:
    """', and this one is busy now (load ...)' when more processes want the CPU than it has."""
    try:
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
    except (AttributeError, OSError):  # no load average on this system
        return ""
    return f", and this one is busy now (load {load:.1f} on {cores} cores)" if load > cores else ""


def run(args, argv) -> int:
    """Raises UsageError for bad input, before anything runs."""
    try:
        tasks = _choices(args.tasks, TASKS, "tasks")
        strategies = _choices(args.strategies, timeseries.STRATEGIES, "strategies")
        methods = _choices(args.methods, sentiment.METHODS, "methods")
        if args.target is not None and args.pairs is not None:
            raise ValueError("give either --pairs or --target (with --sources), not both")
        if args.target is None and args.sources is not None:
            raise ValueError("--sources chooses the sources of --target; give --target NAME too")
        ranking = []
        if args.target is not None:
            data.check_ucr_names([args.target], args.data_root)
            sources, ranking = timeseries.choose_sources(args.target, args.sources or "auto",
                                                         args.data_root)
            pairs = [f"{source}->{args.target}" for source in sources]
        else:
            pairs = ["->".join(timeseries.parse_pair(pair))
                     for pair in _list(args.pairs if args.pairs is not None else ",".join(timeseries.DEFAULT_PAIRS))]
        if "timeseries" in tasks:
            if not pairs:
                raise ValueError("--pairs is empty")
            data.check_ucr_names([name for pair in pairs for name in timeseries.parse_pair(pair)],
                                 args.data_root)
        fractions = _fractions(args.fractions)
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error), PROG) from None
    device = args.device

    seed_count, series_changes, text_changes = BUDGETS[args.budget]
    seeds = list(range(args.seeds if args.seeds is not None else seed_count))
    series_config = dataclasses.replace(timeseries.SeriesConfig(), **series_changes)
    text_config = dataclasses.replace(sentiment.TextConfig(), **text_changes)
    compare = not args.no_torch_compare
    out = Path(args.out) if args.out else Path("demo-results") / slug(device)

    series_plan = (timeseries.planned_work(pairs, strategies, seeds, series_config, compare, args.data_root)
                   if "timeseries" in tasks else [])
    methods, skipped = sentiment.runnable(methods) if "text" in tasks else (methods, "")
    if skipped:
        print(skipped, file=sys.stderr, flush=True)
    text_plan = sentiment.planned_work(methods, fractions, seeds, text_config, compare) if "text" in tasks else []
    weights, line = expected_seconds(series_plan, text_plan, series_config, text_config, device)
    print(line, file=sys.stderr, flush=True)
    progress = Progress(len(weights), quiet=args.quiet, weights=weights)
    results, info = [], {"expected_s": sum(weights)}
    if skipped:
        info["text_skipped"] = skipped
    if ranking:
        info["source_ranking"] = {"target": args.target, "sources": args.sources or "auto",
                                  "ranking": ranking}
    start = time.perf_counter()
    try:
        if "timeseries" in tasks:
            series, info["timeseries"] = timeseries.run(pairs, strategies, seeds, series_config, device,
                                                        progress, compare, args.data_root)
            results += series
        if "text" in tasks:
            text, info["text"] = sentiment.run(methods, fractions, seeds, text_config, device,
                                               progress, compare)
            results += text
    except FileNotFoundError as error:  # a data package is missing
        progress.close()
        raise UsageError(str(error), PROG) from None
    progress.close()
    info["total_s"] = time.perf_counter() - start

    env = environment(device, ["demo", *argv])
    config = {"budget": args.budget, "seeds": seeds, "tasks": tasks,
              "timeseries": {"pairs": pairs, "strategies": strategies, **dataclasses.asdict(series_config)},
              "text": {"methods": methods, "fractions": fractions, **dataclasses.asdict(text_config)}}
    descriptions = {**({k: timeseries.STRATEGIES[k] for k in strategies} if "timeseries" in tasks else {}),
                    **({k: sentiment.METHODS[k] for k in methods} if "text" in tasks else {})}
    rows, heads, paths = report.write(out, env, config, results, info, descriptions)

    print(f"\nrnnfast demo on {env['device']}, torch {env['torch']}, {info['total_s']:.0f} s\n")
    for task, table in report.tables(rows).items():
        print(f"{task}\n{table}\n")
        if task == "text":
            for ablation in report.ablation_tables(rows):
                print(f"{ablation}\n")
    print("headline (scratch vs best transfer):")
    for line in report.headline_lines(heads):
        print(f"  {line}")
    for line in report.criteria_lines(heads):
        print(f"  {line}")
    if ranking:
        print(f"\n{report.ranking_table(info['source_ranking'], heads)}")
    print("\nwritten: " + ", ".join(str(p) for p in paths))
    return 0

"""`python -m rnnfast demo`: the transfer-learning experiments, with a progress bar,
a results table on stdout and results.json, report.md and PNG plots in --out."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from ..bench.report import environment, slug
from ..progress import Progress
from . import report, sentiment, timeseries

TASKS = ("timeseries", "text")

# Each budget: (seeds, SeriesConfig changes, TextConfig changes). "default" finishes in
# under 10 minutes on a 2-core CPU; "tiny" is the smoke test's end-to-end run.
BUDGETS = {
    "tiny": (1, dict(epochs=2, source_steps=4, feature_epochs=2),
             dict(vocab=400, embedding=16, hidden=16, source_texts=300, target_texts=400,
                  min_steps=2, min_epochs=1, max_epochs=1)),
    "default": (3, {}, {}),
    "full": (5, dict(epochs=300, source_steps=600, feature_epochs=500),
             dict(source_texts=0, lm_epochs=6, min_steps=400)),
}


def _list(text: str) -> list:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {TASKS}")
    p.add_argument("--budget", choices=tuple(BUDGETS), default="default",
                   help="tiny: seconds (smoke test); default: under 10 min on a 2-core CPU; "
                        "full: more seeds, data and epochs")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the budget's)")
    p.add_argument("--pairs", default=",".join(timeseries.DEFAULT_PAIRS),
                   help="time-series 'Source->Target' pairs of UCR/UEA sets shipped in aeon")
    p.add_argument("--strategies", default=",".join(timeseries.STRATEGIES),
                   help=f"time-series strategies, from {tuple(timeseries.STRATEGIES)}")
    p.add_argument("--methods", default=",".join(sentiment.METHODS),
                   help=f"text methods, from {tuple(sentiment.METHODS)}")
    p.add_argument("--fractions", default=",".join(str(f) for f in sentiment.DEFAULT_FRACTIONS),
                   help="text: fractions of the review labels for the learning curves, in (0, 1]")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--no-torch-compare", action="store_true",
                   help="skip the same runs on torch.nn.LSTM")
    p.add_argument("--data-root", default=None,
                   help="folder with <Name>/<Name>_TRAIN.ts and _TEST.ts (default: aeon's copy)")
    p.add_argument("--out", default=None, help="output folder (default demo-results/<device>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _fail(message: str) -> int:
    print(f"rnnfast demo: {message}", file=sys.stderr)
    return 2


def _choices(text: str, allowed, what: str) -> list:
    chosen = _list(text)
    unknown = [c for c in chosen if c not in allowed]
    if not chosen or unknown:
        raise ValueError(f"--{what} must be a comma-separated subset of {tuple(allowed)}, got {text!r}")
    return chosen


def run(args, argv) -> int:
    try:
        tasks = _choices(args.tasks, TASKS, "tasks")
        strategies = _choices(args.strategies, timeseries.STRATEGIES, "strategies")
        methods = _choices(args.methods, sentiment.METHODS, "methods")
        pairs = _list(args.pairs)
        for pair in pairs:
            timeseries.parse_pair(pair)
        fractions = [float(f) for f in _list(args.fractions)]
        if not fractions or not all(0 < f <= 1 for f in fractions):
            raise ValueError(f"--fractions must be numbers in (0, 1], got {args.fractions!r}")
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                              else "cpu" if args.device == "auto" else args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: this torch has no CUDA device")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"--device must be auto, cpu or cuda[:N], got {args.device!r}")
    except ValueError as error:
        return _fail(str(error))
    if not pairs and "timeseries" in tasks:
        return _fail("--pairs is empty")

    seed_count, series_changes, text_changes = BUDGETS[args.budget]
    seeds = list(range(args.seeds if args.seeds is not None else seed_count))
    if not seeds:
        return _fail(f"--seeds must be >= 1, got {args.seeds}")
    series_config = dataclasses.replace(timeseries.SeriesConfig(), **series_changes)
    text_config = dataclasses.replace(sentiment.TextConfig(), **text_changes)
    compare = not args.no_torch_compare
    out = Path(args.out) if args.out else Path("demo-results") / slug(device)

    total = ((timeseries.planned_runs(pairs, strategies, seeds, compare) if "timeseries" in tasks else 0)
             + (sentiment.planned_runs(methods, fractions, seeds, compare) if "text" in tasks else 0))
    progress = Progress(total, quiet=args.quiet)
    results, info = [], {}
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
    except FileNotFoundError as error:
        progress.close()
        return _fail(str(error))
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
    print("headline (scratch vs best transfer):")
    for line in report.headline_lines(heads):
        print(f"  {line}")
    print("\nwritten: " + ", ".join(str(p) for p in paths))
    return 0

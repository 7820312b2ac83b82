"""`python -m rnnfast verify`: build, check, measure and record on a GPU in one command
that a hung kernel cannot stop (docs/verify.md)."""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

from rnnfast.backends import evidence
from rnnfast.bench import providers as bench_providers, report
from rnnfast.verify import stages as stages_mod, summary
from rnnfast.verify.stages import STAGE_NAMES, STAGES

DEFAULT_BUDGET_S = 480.0


def _stage_list(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in STAGE_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(STAGE_NAMES)}, got {text!r}")
    return names


def _limit(text: str) -> tuple[str, float]:
    name, _, seconds = text.partition("=")
    try:
        value = float(seconds)
    except ValueError:
        value = -1.0
    if name not in STAGE_NAMES or value <= 0:
        raise argparse.ArgumentTypeError(f"expected STAGE=SECONDS with STAGE one of {', '.join(STAGE_NAMES)}, "
                                         f"got {text!r}")
    return name, value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _count(least: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text!r}")
        return value
    return parse


def _providers(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in bench_providers.KNOWN_PROVIDERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of {', '.join(bench_providers.KNOWN_PROVIDERS)}, got {text!r}")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="results folder (default rnnfast-verify/<gpu-slug>/; commit it as "
                                 "bench/results/<gpu-slug>/verify/)")
    p.add_argument("--stages", type=_stage_list, default=list(STAGE_NAMES),
                   help=f"comma list of {','.join(STAGE_NAMES)} (default: all; env always runs first)")
    p.add_argument("--budget-s", type=_positive_seconds, default=DEFAULT_BUDGET_S,
                   help=f"the whole run's time; stages that cannot fit are skipped (default {DEFAULT_BUDGET_S:.0f})")
    p.add_argument("--limit", type=_limit, action="append", default=[], metavar="STAGE=SECONDS",
                   help="another time limit for a stage (default: " +
                        ", ".join(f"{s.name}={s.limit_s:.0f}" for s in STAGES) + ")")
    p.add_argument("--dry-run", action="store_true",
                   help="walk every stage on the CPU: tiny smoke cases (Triton in its interpreter), "
                        "the stages that need CUDA reported as skipped")
    p.add_argument("--providers", type=_providers, default=None,
                   help="bench providers (default: all; nn.LSTM, the baseline, is always included)")
    p.add_argument("--repeats", type=_count(1), default=10, help="bench: timed repeats per mode (default 10)")
    p.add_argument("--warmup", type=_count(0), default=3, help="bench: untimed repeats first (default 3)")


def run(args, argv: list[str]) -> int:
    started = time.monotonic()
    deadline = started + args.budget_s
    if args.dry_run:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        print("python -m rnnfast verify: error: no CUDA device here (torch "
              f"{torch.__version__}); --dry-run walks the stages on the CPU", file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else Path("rnnfast-verify") / report.slug(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = stages_mod.Context(out_dir=out_dir.resolve(), device=device, dry_run=args.dry_run,
                             repo=stages_mod.source_tree(), log=stages_mod.Log(out_dir / "logs.txt"),
                             repeats=args.repeats, warmup=args.warmup, providers=args.providers)

    env = stages_mod.environment(ctx, argv)
    (out_dir / "env.json").write_text(json.dumps(env, indent=1, default=str))
    gpu = env["gpu"]
    print(f"rnnfast verify on {gpu['name'] + ' (' + str(gpu['sms']) + ' SMs)' if gpu else env['device']}"
          f" | torch {env['torch']} | Triton {env['triton']} | nvcc {env['nvcc']} | budget {args.budget_s:.0f} s"
          f" | results: {out_dir}", flush=True)
    records = [{"stage": "env", "status": "PASS", "seconds": round(time.monotonic() - started, 1)}]

    limits = dict(args.limit)
    chosen = [s for s in STAGES if s.name in args.stages]
    for spec in STAGES:
        if spec not in chosen:
            records.append({"stage": spec.name, "status": "skipped: not in --stages", "seconds": 0.0})
            continue
        later = chosen[chosen.index(spec) + 1:]
        remaining = deadline - time.monotonic()
        seconds = stages_mod.stage_time(spec, remaining, later, limits.get(spec.name))
        stage_started = time.monotonic()
        if seconds is None:
            status = (f"skipped: budget ({remaining:.0f} s left, "
                      f"{stages_mod.time_needed(spec, later):.0f} s needed to start it)")
        else:
            print(f"\n[{spec.name}] {spec.what} (up to {seconds:.0f} s)", flush=True)
            try:
                status = stages_mod.RUNNERS[spec.name](ctx, seconds)
            except Exception as error:  # a bug in one stage must not cost the others
                ctx.log.section(f"{spec.name}: verify error", traceback.format_exc())
                status = f"FAIL: verify itself raised {type(error).__name__}: {error}"[:300]
            print(f"[{spec.name}] {status}", flush=True)
        records.append({"stage": spec.name, "status": status,
                        "seconds": round(time.monotonic() - stage_started, 1)})

    earned = []
    if gpu:
        earned = evidence.earned_rows(gpu["name"], ctx.results.get("smoke", []), ctx.results.get("bench_rows", []),
                                      f"bench/results/{env['slug']}/verify")
    try:
        text = summary.write(out_dir, env, records, ctx.results, earned, args.budget_s)
    except Exception:  # what was written so far stays; the run's end must still be said
        ctx.log.section("summary: verify error", traceback.format_exc())
        print(f"python -m rnnfast verify: writing the summary failed (logs.txt):\n"
              f"{traceback.format_exc(limit=-1)}", file=sys.stderr)
        return 1
    print("\n" + text, flush=True)
    failed = [r for r in records if r["status"].startswith(("FAIL", "TIMEOUT"))]
    return 1 if failed else 0

"""The demo's outputs: a summary per (setting, strategy, LSTM), the headline per task,
tables for stdout and markdown, results.json, and PNG plots."""
from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Optional

from .sentiment import PLANS


def summarise(results: list) -> list:
    """One row per (task, setting, strategy, lstm): accuracy mean / sd / n over seeds,
    mean wall time, activation memory (first seed), CUDA peak, trainable parameters."""
    groups: dict = defaultdict(list)
    for r in results:
        groups[(r.task, r.setting, r.strategy, r.lstm)].append(r)
    rows = []
    for (task, setting, strategy, lstm), runs in groups.items():
        accuracies = [r.accuracy for r in runs]
        peaks = [r.peak_mb for r in runs if r.peak_mb is not None]
        rows.append({
            "task": task, "setting": setting, "strategy": strategy, "lstm": lstm,
            "seeds": [r.seed for r in runs], "accuracy_mean": statistics.fmean(accuracies),
            "accuracy_sd": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "wall_s_mean": statistics.fmean(r.wall_s for r in runs),
            "activation_mb": runs[0].activation_mb, "peak_mb": max(peaks) if peaks else None,
            "trainable_params": runs[0].trainable_params,
            # what a validation rule chose, seed by seed ("lr/epochs"), where one did
            "chosen": [f"{r.extra['lr']:g}/{r.extra['epochs']}" for r in runs if "lr" in r.extra],
        })
    return rows


def _find(rows, setting, strategy, lstm="rnnfast") -> Optional[dict]:
    return next((r for r in rows if r["setting"] == setting and r["strategy"] == strategy
                 and r["lstm"] == lstm), None)


def is_scratch(strategy: str) -> bool:
    """A model trained from scratch, under any recipe ("scratch", "scratch_stlr", ...)."""
    return strategy == "scratch" or strategy.startswith("scratch_")


def _scratch(rows, setting) -> Optional[dict]:
    """The best from-scratch row of a setting (rnnfast runs): what transfer must beat."""
    candidates = [r for r in rows if r["setting"] == setting and r["lstm"] == "rnnfast"
                  and is_scratch(r["strategy"])]
    return max(candidates, key=lambda r: r["accuracy_mean"]) if candidates else None


def headlines(rows: list) -> list:
    """Per setting: the best from-scratch model (any recipe) against the best transfer
    strategy (rnnfast runs; baselines without an LSTM, lstm "none", are neither). The
    gain counts as beyond the seed spread when it exceeds sqrt(sd_scratch^2 + sd_best^2)."""
    out = []
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    for setting in settings:
        scratch = _scratch(rows, setting)
        others = [r for r in rows if r["setting"] == setting and r["lstm"] == "rnnfast"
                  and not is_scratch(r["strategy"])]
        if scratch is None or not others:
            continue
        best = max(others, key=lambda r: r["accuracy_mean"])
        gain = best["accuracy_mean"] - scratch["accuracy_mean"]
        spread = math.hypot(scratch["accuracy_sd"], best["accuracy_sd"])
        out.append({"task": scratch["task"], "setting": setting, "scratch_strategy": scratch["strategy"],
                    "scratch": scratch["accuracy_mean"], "scratch_sd": scratch["accuracy_sd"],
                    "best": best["strategy"], "best_accuracy": best["accuracy_mean"],
                    "best_sd": best["accuracy_sd"], "gain": gain, "spread": spread,
                    "beyond_spread": gain > spread if len(scratch["seeds"]) > 1 else None,
                    "seeds": len(scratch["seeds"])})
    return out


def _accuracy(row: dict) -> str:
    if len(row["seeds"]) > 1:
        return f"{row['accuracy_mean']:.3f} ± {row['accuracy_sd']:.3f}"
    return f"{row['accuracy_mean']:.3f}"


# Why a table has no nn.LSTM figure for a row: the comparison runs once per strategy (text:
# at the largest label fraction, plain recipe), so the demo does not take twice as long.
NOT_COMPARED = "not run¹"
NOT_COMPARED_NOTE = ("¹ nn.LSTM is run once per strategy and pair (first seed); for the text task at "
                     "the largest label fraction and the plain recipe only, to keep the demo's time down "
                     "(the recipes train the same model); `--no-torch-compare` skips it.")


def _cost(rows, row) -> tuple:
    """rnnfast's and nn.LSTM's wall time and activation memory for the same run."""
    if row["lstm"] == "none":  # a baseline without an LSTM: its time only
        return f"{row['wall_s_mean']:.1f}", "", "", ""
    torch_row = _find(rows, row["setting"], row["strategy"], "torch")
    if torch_row is None:
        return f"{row['wall_s_mean']:.1f}", NOT_COMPARED, f"{row['activation_mb']:.2f}", NOT_COMPARED
    return (f"{row['wall_s_mean']:.1f}", f"{torch_row['wall_s_mean']:.1f}",
            f"{row['activation_mb']:.2f}", f"{torch_row['activation_mb']:.2f}")


def tables(rows: list) -> dict:
    """Markdown tables, one per task: accuracy, gain over the best from-scratch model,
    the lr and epochs a validation rule chose (time series), time and activation memory
    for rnnfast and the same run on torch.nn.LSTM (and the baselines without an LSTM)."""
    out = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        chosen = any(r["chosen"] for r in rows if r["task"] == task)
        lines = ["| setting | strategy | accuracy (mean ± sd) | vs best scratch | "
                 + ("lr/epochs chosen per seed | " if chosen else "") + "trainable | "
                 "time rnnfast s | time nn.LSTM s | act. MB rnnfast | act. MB nn.LSTM |",
                 "|---|---|---|---|---|---|---|---|---|" + ("---|" if chosen else "")]
        for row in rows:
            if row["task"] != task or row["lstm"] == "torch":
                continue
            scratch = _scratch(rows, row["setting"])
            delta = ("" if scratch is None or row is scratch
                     else f"{100 * (row['accuracy_mean'] - scratch['accuracy_mean']):+.1f} pts")
            lines.append(f"| {row['setting']} | {row['strategy']} | {_accuracy(row)} | {delta} | "
                         + (f"{', '.join(row['chosen'])} | " if chosen else "")
                         + f"{row['trainable_params']:,} | " + " | ".join(_cost(rows, row)) + " |")
        if any(NOT_COMPARED in line for line in lines):
            lines += ["", NOT_COMPARED_NOTE]
        out[task] = "\n".join(lines)
    return out


def ablation_tables(rows: list) -> list:
    """Text only: per label fraction, accuracy by init (rows) x recipe (columns), from
    sentiment.PLANS (method -> (init, recipe)); "" where a combination did not run."""
    text = {(r["setting"], r["strategy"]): r for r in rows if r["task"] == "text" and r["lstm"] == "rnnfast"}
    ran = [m for m in PLANS if any(strategy == m for _, strategy in text)]
    inits = list(dict.fromkeys(PLANS[m][0] for m in ran))
    recipes = list(dict.fromkeys(PLANS[m][1] for m in ran))
    if len(recipes) < 2:
        return []
    out = []
    for setting in dict.fromkeys(setting for setting, _ in text):
        lines = [f"{setting}: init x recipe", "", "| init | " + " | ".join(recipes) + " |",
                 "|---|" + "---|" * len(recipes)]
        for init in inits:
            cells = []
            for recipe in recipes:
                method = next((m for m in ran if PLANS[m] == (init, recipe)), None)
                row = text.get((setting, method))
                cells.append(_accuracy(row) if row else "")
            lines.append(f"| {init} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return out


def headline_lines(heads: list) -> list:
    lines = []
    for h in heads:
        verdict = ("one seed: no spread to compare with" if h["beyond_spread"] is None else
                   "beyond the seed spread" if h["beyond_spread"] else
                   "NOT beyond the seed spread" if h["gain"] > 0 else "transfer did not help")
        lines.append(f"{h['setting']}: {h['scratch_strategy']} {h['scratch']:.3f} ± {h['scratch_sd']:.3f} -> "
                     f"{h['best']} {h['best_accuracy']:.3f} ± {h['best_sd']:.3f} "
                     f"({100 * h['gain']:+.1f} pts, spread {100 * h['spread']:.1f} pts: {verdict}; "
                     f"{h['seeds']} seeds)")
    return lines


def ranking_table(ranking: dict, heads: list) -> str:
    """--target with --sources auto: every candidate by DTW distance, which were chosen,
    and for those whether their best transfer beat scratch on the target."""
    by_pair = {h["setting"]: h for h in heads}
    lines = [f"Sources for {ranking['target']} (--sources {ranking['sources']}), nearest first "
             "(mean DTW distance from each target class prototype to the nearest source one):", "",
             "| rank | source | DTW distance | chosen | best transfer vs scratch |", "|---|---|---|---|---|"]
    for rank, row in enumerate(ranking["ranking"], 1):
        head = by_pair.get(f"{row['source']}->{ranking['target']}")
        outcome = ""
        if head is not None:
            beat = ("beat scratch beyond the seed spread" if head["beyond_spread"] else
                    "did not beat scratch" if head["gain"] <= 0 else
                    "ahead, but not beyond the seed spread" if head["beyond_spread"] is False else
                    "ahead (one seed)")
            outcome = f"{head['best']} {100 * head['gain']:+.1f} pts: {beat}"
        lines.append(f"| {rank} | {row['source']} | {row['distance']:.2f} | "
                     f"{'yes' if row['chosen'] else ''} | {outcome} |")
    return "\n".join(lines)


def criteria_lines(heads: list) -> list:
    """The demo's two claims, measured: in how many settings the best transfer beats
    scratch beyond the seed spread; and, for the text task, whether the best transfer
    with 10% of the labels reaches scratch with all of them (by how much it misses)."""
    judged = [h for h in heads if h["beyond_spread"] is not None]
    lines = []
    if judged:
        wins = [h["setting"] for h in judged if h["beyond_spread"]]
        lines.append(f"best transfer beyond the seed spread over scratch: {len(wins)} of {len(judged)} "
                     f"settings" + (f" ({', '.join(wins)})" if wins else ""))
    text = {_fraction(h["setting"]): h for h in heads if h["task"] == "text"}
    if 0.1 in text and 1.0 in text:
        few, full = text[0.1], text[1.0]
        gap = few["best_accuracy"] - full["scratch"]
        verdict = "reaches it" if gap >= 0 else f"misses it by {100 * -gap:.1f} pts"
        lines.append(f"text, best transfer with 10% of the labels ({few['best']} {few['best_accuracy']:.3f}) "
                     f"against scratch with 100% ({full['scratch']:.3f}): {verdict}")
    return lines


def markdown(env: dict, config: dict, rows: list, heads: list, info: dict, descriptions: dict,
             plots: list) -> str:
    parts = ["# rnnfast demo: transfer learning on real offline data", "",
             f"- machine: {env['device']}; torch {env['torch']}"
             + (f", CUDA {env['cuda']}" if env.get("cuda") and env["device_type"] == "cuda" else ""),
             f"- command: `{env['command']}`", f"- finished: {env['time']}, total {info['total_s']:.0f} s",
             "", "## Headline (scratch vs the best transfer strategy, rnnfast runs)", ""]
    parts += [f"- {line}" for line in headline_lines(heads)] or ["- (no scratch baseline in this run)"]
    criteria = criteria_lines(heads)
    if criteria:
        parts += ["", "## Headline criteria (measured)", "", *(f"- {line}" for line in criteria)]
    if "source_ranking" in info:
        parts += ["", "## Source choice", "", ranking_table(info["source_ranking"], heads)]
    for task, table in tables(rows).items():
        parts += ["", f"## {task}", "", table]
        if task == "text":
            for ablation in ablation_tables(rows):
                parts += ["", ablation]
    parts += ["", "## Strategies", ""]
    parts += [f"- `{name}`: {text}" for name, text in descriptions.items()]
    parts += ["", "## Notes", "",
              "- accuracy: on the target's test split (UCR: the official one; reviews: a fixed "
              "20% split), mean ± sample sd over seeds; the seeds vary initialisation, data "
              "order and (text) which labels are used, the source model is trained once.",
              "- time: training plus evaluation of one run (source pretraining excluded); "
              "act. MB: what autograd saved for backward in one training step, parameters "
              "excluded. nn.LSTM columns: the same run (first seed) with every rnnfast.LSTM "
              "swapped for torch.nn.LSTM (cuDNN on GPU, oneDNN on CPU).",
              "- spread of a gain: sqrt(sd_scratch² + sd_strategy²).",
              "", "## Data and settings", "", "```json",
              json.dumps({"config": config, "info": {k: v for k, v in info.items() if k != "total_s"}},
                         indent=1, default=str), "```"]
    if plots:
        parts += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(parts) + "\n"


def plots(folder: Path, rows: list, info: dict) -> list:
    """accuracy_timeseries.png (mean ± sd per strategy, one group per pair, the target's
    majority-class rate as the chance line), learning_curve.png (text accuracy against
    the fraction of review labels) and cost.png (activation memory and wall time per
    strategy, rnnfast against the same runs on nn.LSTM)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    figures = {}
    mine = [r for r in rows if r["lstm"] == "rnnfast"]
    series = [r for r in mine if r["task"] == "timeseries"]
    if series:
        figures["accuracy_timeseries.png"] = _timeseries_figure(plt, series, info.get("timeseries", {}))
    text = [r for r in rows if r["task"] == "text" and r["lstm"] != "torch"]
    if text:
        figures["learning_curve.png"] = _learning_curve_figure(plt, text, info.get("text", {}))
    if any(r["lstm"] == "torch" for r in rows):
        figures["cost.png"] = _cost_figure(plt, rows)
    written = []
    for name, fig in figures.items():
        fig.tight_layout()
        written.append(folder / name)
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


def _timeseries_figure(plt, series: list, pairs: dict):
    settings = list(dict.fromkeys(r["setting"] for r in series))
    strategies = list(dict.fromkeys(r["strategy"] for r in series))
    fig, ax = plt.subplots(figsize=(max(6.5, 2.4 * len(settings)), 4.8))
    width = 0.8 / len(strategies)
    lows = []
    for k, strategy in enumerate(strategies):
        xs, ys, es = [], [], []
        for j, setting in enumerate(settings):
            row = _find(series, setting, strategy)
            if row is not None:
                xs.append(j + (k - (len(strategies) - 1) / 2) * width)
                ys.append(row["accuracy_mean"])
                es.append(row["accuracy_sd"])
        lows += [y - e for y, e in zip(ys, es)]
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=strategy)
    for j, setting in enumerate(settings):
        chance = pairs.get(setting, {}).get("majority_test_accuracy")
        if chance is not None:
            lows.append(chance)
            ax.hlines(chance, j - 0.45, j + 0.45, colors="black", linestyles="dashed", linewidth=1,
                      label="chance (majority class)" if j == 0 else None)
    # Not from 0: a 7-point gain must be visible. The axis says where it starts.
    ax.set_ylim(max(0.0, min(lows) - 0.05), 1.0)
    ax.set_xticks(range(len(settings)), [s.replace("->", "\n→ ") for s in settings], fontsize=8)
    ax.set_ylabel("test accuracy (axis starts above 0)")
    ax.set_title("Time series: accuracy per transfer strategy (mean ± sd over seeds)")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    return fig


def _learning_curve_figure(plt, text: list, info: dict):
    """Per init (scratch, glove, lm, ...) the recipe with the best mean accuracy over the
    fractions, and the baselines without an LSTM: ten curves would hide each other."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    family = {m: PLANS[m][0] if m in PLANS else m for m in dict.fromkeys(r["strategy"] for r in text)}

    def mean_accuracy(method: str) -> float:
        return statistics.fmean(r["accuracy_mean"] for r in text if r["strategy"] == method)

    methods = [max((m for m in family if family[m] == f), key=mean_accuracy)
               for f in dict.fromkeys(family.values())]
    fractions = sorted({_fraction(r["setting"]) for r in text})
    for k, method in enumerate(methods):
        points = sorted((_fraction(r["setting"]), r["accuracy_mean"], r["accuracy_sd"])
                        for r in text if r["strategy"] == method)
        # Shift each method a little sideways (log axis) so error bars do not hide each other.
        shift = 1.06 ** (k - (len(methods) - 1) / 2)
        ax.errorbar([p[0] * shift for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                    marker="osD^v"[k % 5], capsize=3, label=method,
                    linestyle="dotted" if method not in PLANS else "solid")
    chance = info.get("majority_test_accuracy")
    if chance is not None:
        ax.axhline(chance, color="black", linestyle="dashed", linewidth=1, label="chance (majority class)")
    ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{100 * f:g}%" for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("share of the review labels used for training")
    ax.set_ylabel("test accuracy")
    ax.set_title("Text: movie-review sentiment, learning curves (best recipe per init)")
    ax.legend(fontsize=8)
    return fig


def _cost_figure(plt, rows: list):
    """Per task, the settings where nn.LSTM ran too: the mean over them of each
    strategy's activation memory and wall time, rnnfast beside nn.LSTM."""
    tasks = [t for t in dict.fromkeys(r["task"] for r in rows)
             if any(r["task"] == t and r["lstm"] == "torch" for r in rows)]
    fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 3.4 * len(tasks)), squeeze=False)
    for (ax_memory, ax_time), task in zip(axes, tasks):
        compared = [r for r in rows if r["task"] == task and r["lstm"] == "torch"]
        settings = list(dict.fromkeys(r["setting"] for r in compared))
        strategies = list(dict.fromkeys(r["strategy"] for r in compared))
        where = settings[0] if len(settings) == 1 else f"mean of {len(settings)} pairs"
        for ax, key, unit in ((ax_memory, "activation_mb", "activation memory per step, MB"),
                              (ax_time, "wall_s_mean", "wall time per run, s")):
            for k, lstm in enumerate(("rnnfast", "torch")):
                values = [statistics.fmean(r[key] for r in rows if r["task"] == task and r["lstm"] == lstm
                                           and r["strategy"] == strategy and r["setting"] in settings)
                          for strategy in strategies]
                ax.bar([j + (k - 0.5) * 0.4 for j in range(len(strategies))], values, 0.4,
                       label="rnnfast" if lstm == "rnnfast" else "torch.nn.LSTM")
            ax.set_xticks(range(len(strategies)), strategies, fontsize=8, rotation=20)
            ax.set_ylabel(unit, fontsize=8)
            ax.set_title(f"{task} ({where})", fontsize=9)
            ax.legend(fontsize=7)
    fig.suptitle("Cost per strategy, the same runs on rnnfast and on torch.nn.LSTM")
    return fig


def _fraction(setting: str) -> float:
    return float(setting.rsplit(" ", 1)[1].rstrip("%")) / 100


def write(folder: Path, env: dict, config: dict, results: list, info: dict, descriptions: dict) -> tuple:
    """results.json, report.md and the plots in `folder`; returns (rows, heads, paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = summarise(results)
    heads = headlines(rows)
    images = plots(folder, rows, info)
    (folder / "results.json").write_text(json.dumps(
        {"environment": env, "config": config, "info": info, "headlines": heads, "summary": rows,
         "runs": [r.as_dict() for r in results]}, indent=1, default=str))
    (folder / "report.md").write_text(markdown(env, config, rows, heads, info, descriptions, images))
    return rows, heads, [folder / "results.json", folder / "report.md", *images]

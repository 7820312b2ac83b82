"""One progress display for the long commands (`bench`, `demo`)."""
from __future__ import annotations

import sys
import time
from typing import Optional, Sequence


def duration(seconds: float) -> str:
    """'45 s', '7 min', '1 h 10 min': a duration as a person reads it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class Progress:
    """Progress over a known number of runs, on stderr. On a terminal: a bar (tqdm when
    installed); otherwise (a log file, a pipe) one line per finished run, with its
    description, note, time, the time elapsed and an estimate of the time left.
    `quiet` shows nothing. `weights`: each run's expected cost, in run order; the time
    left is then the remaining weight at the pace of the finished weight, instead of
    counting every run alike. start(description) begins a run, finish(note) ends it,
    write(message) prints without breaking the bar."""

    def __init__(self, total: int, quiet: bool = False, weights: Optional[Sequence[float]] = None) -> None:
        if weights is not None and len(weights) != total:
            raise ValueError(f"Progress: {len(weights)} weights for {total} runs")
        self.quiet, self.done, self.total = quiet, 0, total
        self.weights = list(weights) if weights is not None else [1.0] * total
        self.description = ""
        self.started = self.run_started = time.perf_counter()
        self.bar = None
        if not quiet and sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, unit="run", file=sys.stderr, dynamic_ncols=True,
                                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
            except ImportError:
                pass

    def left_s(self) -> Optional[float]:
        """Estimated seconds to go, None before the first run with a weight has finished."""
        finished = sum(self.weights[:self.done])
        if finished <= 0:
            return None
        return (time.perf_counter() - self.started) * sum(self.weights[self.done:]) / finished

    def start(self, description: str) -> None:
        self.description, self.run_started = description, time.perf_counter()
        if self.bar is not None:
            self.bar.set_description(description[:60])

    def finish(self, note: str = "") -> None:
        self.done += 1
        if self.quiet:
            return
        now = time.perf_counter()
        left = self.left_s()
        left_text = "" if left is None or self.done == self.total else f", about {duration(left)} left"
        if self.bar is not None:
            self.bar.set_postfix_str(", ".join(filter(None, [note, left_text[2:]])), refresh=False)
            self.bar.update(1)
        else:
            print(f"[{self.done}/{self.total}] {self.description}{': ' + note if note else ''} "
                  f"({now - self.run_started:.1f} s; {duration(now - self.started)} elapsed{left_text})",
                  file=sys.stderr, flush=True)

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        elif not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

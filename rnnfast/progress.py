"""One progress display for the long commands (`bench`, `demo`)."""
from __future__ import annotations

import sys


class Progress:
    """A bar over a known number of runs on stderr: tqdm when installed, else a line
    per run; `quiet` shows nothing. start(description) begins a run, finish(note)
    ends it, write(message) prints without breaking the bar."""

    def __init__(self, total: int, quiet: bool = False) -> None:
        self.quiet, self.done, self.total = quiet, 0, total
        self.bar = None
        if not quiet:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, unit="run", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass

    def start(self, description: str) -> None:
        if self.bar is not None:
            self.bar.set_description(description[:60])
        elif not self.quiet:
            print(f"[{self.done + 1}/{self.total}] {description}", file=sys.stderr, flush=True)

    def finish(self, note: str = "") -> None:
        self.done += 1
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(note)
            self.bar.update(1)

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        elif not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

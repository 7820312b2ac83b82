"""What every `python -m rnnfast` command shares on its command line: the parser, the
argument types, and how a mistake is answered (one line on stderr, exit code 2, no
traceback: `main` catches UsageError)."""
from __future__ import annotations

import argparse
from typing import Optional

import torch


class UsageError(Exception):
    """Bad command-line input. `prog` names the command ("python -m rnnfast bench");
    None: the command being run."""

    def __init__(self, message: str, prog: Optional[str] = None) -> None:
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that takes no abbreviations (`--pair` is not `--pairs`), for
    itself and its subparsers, and raises UsageError instead of printing the usage
    and exiting."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        if message.startswith("unrecognized arguments"):
            message += " (a command's --help lists its options)"
        raise UsageError(message, self.prog)


def device(text: Optional[str]) -> torch.device:
    """--device: cpu, cuda, cuda:N; None or "auto": CUDA when present, else the CPU.
    A device this machine lacks is an error here rather than deep inside torch."""
    if text is None or text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        result = torch.device(text)
    except RuntimeError:
        result = None
    if result is None or result.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    if result.type == "cuda":
        if not torch.cuda.is_available():
            built = "is built without CUDA" if torch.version.cuda is None else "finds no CUDA device"
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has no usable CUDA device (torch {torch.__version__} "
                f"{built}); use --device cpu")
        count = torch.cuda.device_count()
        if result.index is not None and result.index >= count:
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has {count} CUDA device{'s' if count > 1 else ''} "
                f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
    return result


def _integer(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < least:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _integer(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    return _integer(text, 0, "an integer >= 0")

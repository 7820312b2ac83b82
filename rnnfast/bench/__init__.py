"""The benchmark suite behind `python -m rnnfast bench` (issue 5, DESIGN.md §8).

One way to do each thing, shared by the CLI and the pytest-benchmark suites in bench/:
  cases.py      the standard cases (GPU) and their CPU-sized counterparts
  providers.py  every implementation timed: rnnfast backends, nn.LSTM, a plain step
                loop (eager and torch.compile), FlashRNN; a missing one says why
  runner.py     correctness check against nn.LSTM, then timing and memory per mode
  floor.py      the hardware limits of each case (FLOP, bytes, per-step latency)
  report.py     stdout table, JSON, CSV and plots under bench/results/<device>/
  cli.py        the `bench` subcommand
"""
from .cases import Case, MODES, standard_cases  # noqa: F401

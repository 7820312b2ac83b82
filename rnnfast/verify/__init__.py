"""`python -m rnnfast verify` (issue 14; docs/verify.md): on a GPU, one command that
builds the CUDA extension, checks every backend against nn.LSTM, runs the GPU tests
and compute-sanitizer, times the standard cases against cuDNN, and writes results
ready to commit under bench/results/<gpu>/verify/, inside a time budget that no hung
kernel can break (all GPU work runs in child processes that are killed at their limit).

  cli.py      the subcommand: arguments, the stage loop, the exit code
  stages.py   the stages, their time limits and the budget rule, the environment record
  child.py    child processes under a time limit (process groups, SIGTERM then SIGKILL)
  worker.py   what runs inside the children: smoke, sanitizer and bench cases
  smoke.py    the parity cases (backend x dtype x shape) and the §6 check of one case
  summary.py  summary.md, verify.json, smoke.csv, bench/ results
"""

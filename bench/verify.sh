#!/bin/sh
# `python -m rnnfast verify` for a machine that has only this source tree and a CUDA
# build of torch (rnnfast not installed yet): runs it from the checkout, whose build
# stage then installs rnnfast with its CUDA extension (pip install -e ., offline).
#   bench/verify.sh [--out DIR] [--stages build,probe,smoke,tests,sanitize,bench] [--budget-s 480]
# PYTHON picks the interpreter (default python3). See docs/verify.md.
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" -m rnnfast verify "$@"

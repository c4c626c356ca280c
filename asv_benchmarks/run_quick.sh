#!/bin/sh
# What CI runs: every asv benchmark once (asv --quick, fast profile) against the fastbp
# installed in the current environment (pip install -e .), so the suite cannot rot.
# Times are not judged; a benchmark that fails makes asv exit non-zero.
#   asv_benchmarks/run_quick.sh [more asv run options, e.g. -b Tutorials]
set -e
cd "$(dirname "$0")"
[ -f "$HOME/.asv-machine.json" ] || asv machine --yes > /dev/null
FASTBP_BENCH_PROFILE="${FASTBP_BENCH_PROFILE:-fast}" \
    exec asv run --python=same --quick --show-stderr "$@"

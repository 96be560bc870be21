#!/usr/bin/env bash
# Run the test-suite (offline, about 10 minutes on 2 cores). Creates .venv on first use.
# Extra arguments go to pytest, e.g. ./run_tests.sh tests/scraper -k openi
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_venv.sh --test
exec python -m pytest "$@"

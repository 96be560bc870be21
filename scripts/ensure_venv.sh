#!/usr/bin/env bash
# Sourced by run_pipeline.sh and run_tests.sh: create .venv on first use, then activate it.
# Re-installs when requirements change (a stamp file keeps the hash of what was installed).
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${CXR_VENV:-$_root/.venv}"
_reqs="$_root/requirements.txt"
[ "${1:-}" = "--test" ] && _reqs="$_root/requirements-test.txt"
_stamp="$_venv/.cxr-installed"
_want="$(cat "$_root/requirements.txt" "$_root/requirements-test.txt" "$_root/setup.cfg" | sha256sum | cut -c1-16)-$(basename "$_reqs")"
if [ ! -x "$_venv/bin/python" ]; then
  echo "setting up a virtualenv in $_venv (first run only; a few minutes)..." >&2
  "${PYTHON:-python3}" -m venv "$_venv"
fi
_have="$(cat "$_stamp" 2>/dev/null || true)"
# A test install (requirements-test.txt) is a superset of the runtime one: accept it for the pipeline.
if [ "$_have" != "$_want" ] && [ "$_have" != "${_want%-requirements.txt}-requirements-test.txt" ]; then
  "$_venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$_venv/bin/python" -m pip install --quiet -r "$_reqs" >&2
  "$_venv/bin/python" -m pip install --quiet --no-deps -e "$_root" >&2
  echo "$_want" > "$_stamp"
fi
# shellcheck disable=SC1091
source "$_venv/bin/activate"

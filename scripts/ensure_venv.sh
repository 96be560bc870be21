#!/usr/bin/env bash
# Sourced by run_pipeline.sh and run_tests.sh: create .venv on first use, then activate it.
# Re-installs when requirements change (a stamp file keeps the hash of what was installed).
# Python 3.11-3.13 only (shap 0.51 and keras 3.15 need >= 3.11): a wrong Python, or a .venv
# made by another or a vanished Python, stops here with what to do, before anything is installed.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${CXR_VENV:-$_root/.venv}"
_reqs="$_root/requirements.txt"
[ "${1:-}" = "--test" ] && _reqs="$_root/requirements-test.txt"
_stamp="$_venv/.cxr-installed"
_want="$(cat "$_root/requirements.txt" "$_root/requirements-test.txt" "$_root/setup.cfg" | sha256sum | cut -c1-16)-$(basename "$_reqs")"
_supported="3.11 3.12 3.13"

# "3.11" for a working interpreter, nothing for a missing or broken one
_py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true; }
_venv_die() { echo "ensure_venv: error: $*" >&2; exit 3; }
_is_supported() { [[ " $_supported " == *" $1 "* ]]; }

if [ -e "$_venv" ]; then
  _have_py="$(_py_version "$_venv/bin/python")"
  if [ -z "$_have_py" ]; then
    _venv_die "$_venv is unusable (its Python is missing or broken, e.g. after a Python upgrade). Remove it (rm -rf '$_venv') and run again; set PYTHON=python3.11 (3.11-3.13) to choose the Python."
  fi
  if ! _is_supported "$_have_py"; then
    _venv_die "$_venv was made with Python $_have_py; this project needs Python 3.11-3.13. Remove it (rm -rf '$_venv') and run again with PYTHON=python3.11 (or 3.12, 3.13)."
  fi
  if [ -n "${PYTHON:-}" ] && [ "$(_py_version "$PYTHON")" != "$_have_py" ]; then
    _venv_die "$_venv was made with Python $_have_py but PYTHON=$PYTHON is Python $(_py_version "$PYTHON"); remove it (rm -rf '$_venv') to rebuild it with $PYTHON, or unset PYTHON."
  fi
else
  _python="${PYTHON:-python3}"
  _new_py="$(_py_version "$_python")"
  [ -n "$_new_py" ] || _venv_die "no working Python at '$_python'; install Python 3.11-3.13 and/or set PYTHON=python3.11"
  _is_supported "$_new_py" || _venv_die "'$_python' is Python $_new_py; this project needs Python 3.11-3.13 (shap 0.51 and keras 3.15 need >= 3.11). Install one and run again with PYTHON=python3.11 (or 3.12, 3.13)."
  echo "setting up a virtualenv in $_venv with Python $_new_py (first run only; a few minutes)..." >&2
  "$_python" -m venv "$_venv" || _venv_die "'$_python -m venv' failed (on Debian/Ubuntu: apt install python3-venv); remove '$_venv' and run again"
fi
_have="$(cat "$_stamp" 2>/dev/null || true)"
# A test install (requirements-test.txt) is a superset of the runtime one: accept it for the pipeline.
if [ "$_have" != "$_want" ] && [ "$_have" != "${_want%-requirements.txt}-requirements-test.txt" ]; then
  if ! { "$_venv/bin/python" -m pip install --quiet --upgrade pip >&2 &&
         "$_venv/bin/python" -m pip install --quiet -r "$_reqs" >&2 &&
         "$_venv/bin/python" -m pip install --quiet --no-deps -e "$_root" >&2; }; then
    _venv_die "installing the requirements into $_venv failed (see pip's message above); fix that and run again (the install resumes)"
  fi
  echo "$_want" > "$_stamp"
fi
# shellcheck disable=SC1091
source "$_venv/bin/activate"

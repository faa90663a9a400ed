#!/usr/bin/env bash
# Setup step of the Makefile: make sure VENV is a virtual environment of PYTHON (Python >= 3.10).
#
#   bash scripts/check_python.sh PYTHON VENV
#
# Stops with the fix when PYTHON is missing or older than 3.10. A VENV made by another interpreter
# (another Python version or installation, e.g. macOS's stock python3 3.9) or one that no longer runs
# is deleted and created again from PYTHON; a VENV of PYTHON is kept.
set -eu
python=$1
venv=$2
fix="Fix: install Python >= 3.10 (Debian/Ubuntu: sudo apt-get install -y python3 python3-venv; macOS: brew install python@3.12) and pass it to make, e.g. make test PYTHON=python3.12"
identity='import sys; print("%d.%d %s" % (sys.version_info[0], sys.version_info[1], sys.base_prefix))'

if ! command -v "$python" >/dev/null 2>&1; then
  echo "error: PYTHON=$python not found. $fix" >&2
  exit 1
fi
want=$("$python" -c "$identity") || { echo "error: PYTHON=$python does not run. $fix" >&2; exit 1; }
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "error: PYTHON=$python is Python ${want%% *}; pcnet needs Python >= 3.10. $fix" >&2
  exit 1
fi

if [ -e "$venv" ]; then
  if [ ! -f "$venv/pyvenv.cfg" ]; then
    echo "error: VENV=$venv exists but is not a virtual environment; remove it or choose another VENV=" >&2
    exit 1
  fi
  have=$("$venv/bin/python" -c "$identity" 2>/dev/null) || have="an interpreter that no longer runs"
  if [ "$have" != "$want" ]; then
    echo "[setup] $venv was made by Python $have, not by PYTHON=$python (Python $want): rebuilding $venv"
    rm -rf "$venv"
  fi
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv with $python (Python ${want%% *})"
  "$python" -m venv "$venv" || {
    echo "error: '$python -m venv $venv' failed. Debian/Ubuntu: sudo apt-get install -y python3-venv" >&2
    exit 1
  }
fi

#!/usr/bin/env bash
# Setup step of the Makefile, run just before pip installs the Python packages (torch's default Linux wheel
# alone puts about 5.5 GB into the virtual environment):
#
#   bash scripts/check_disk.sh DIR NEED_MB
#
# Stops with the fix when the file system holding DIR, or the one holding pip's temporary folder
# (TMPDIR, default /tmp), has less than NEED_MB megabytes free; otherwise prints nothing.
set -eu
dir=$1
need_mb=$2
case "$need_mb" in ''|*[!0-9]*) echo "error: NEED_MB must be a whole number of megabytes, got '$need_mb'" >&2; exit 2;; esac
mkdir -p "$dir"
for where in "$dir" "${TMPDIR:-/tmp}"; do
  free_kb=$(df -Pk "$where" | awk 'NR == 2 {print $4}')
  case "$free_kb" in ''|*[!0-9]*) echo "[setup] could not read the free space of $where; not checked"; continue;; esac
  free_mb=$(( free_kb / 1024 ))
  if [ "$free_mb" -lt "$need_mb" ]; then
    echo "error: $where has $free_mb MB free; installing pcnet's Python packages needs about $need_mb MB there." >&2
    echo "Fix: free disk space (old clones, virtual environments, /tmp/pip-*), or point TMPDIR at a larger disk," >&2
    echo "then rerun make. If you know your install is smaller (e.g. a CPU-only torch), lower the check: make ... DISK_NEED_MB=2000" >&2
    exit 1
  fi
done

#!/usr/bin/env bash
# Prints the path of a ready Python environment for this checkout, building it first if needed.
#
# The environment lives outside the clone, in $COLDSTART_CACHE (default ~/.cache/coldstart), keyed by a
# hash of everything that defines it: the lock file, this script and the Python version (pyproject.toml
# holds no pins of its own that matter here: dependencies install from the lock).
# A fresh machine therefore installs from scratch; a second clone of the same commit reuses the
# environment (torch alone is several GB). The project itself is installed editable on every call, so
# the `coldstart` command always runs this checkout's code.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${COLDSTART_CACHE:-$HOME/.cache/coldstart}"
python="${COLDSTART_PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

key="$( { cat "$root/deploy/requirements.lock" "$root/deploy/env.sh"; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)"
env="$cache/env-$key"

if [ ! -f "$env/.complete" ]; then
  echo "coldstart: building the Python environment in $env (first run on this machine; torch is large)" >&2
  # A half-built environment (an interrupted install) has no .complete marker and is rebuilt whole.
  rm -rf "$env"
  mkdir -p "$cache"
  "$python" -m venv "$env"
  "$env/bin/python" -m pip install -q --upgrade pip setuptools wheel >&2
  "$env/bin/python" -m pip install -q -r "$root/deploy/requirements.lock" >&2
  touch "$env/.complete"
fi

# Editable install of this checkout (fast: no dependencies resolved). setuptools warns on every editable
# install of a flat layout; its output is shown only when the install fails.
if ! out=$("$env/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$root" 2>&1); then
  echo "$out" >&2
  exit 1
fi
echo "$env"

#!/usr/bin/env bash
# The Python verifier's tests: the shared vectors, its unit tests, and against the real token
# service (the debug binary cargo built: build it first with
# `cargo build --locked --bin neo-sessions`; this script builds nothing). Installs the package
# (`pip install ./clients/python[test,fastapi]`) into a virtual environment in cargo's target
# directory, then runs pytest; extra arguments go to pytest. Fails when pytest collects no test.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
target_dir=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
binary="${NEO_SESSIONS_BIN:-$target_dir/debug/neo-sessions}"
if [ ! -x "$binary" ]; then
  echo "no $binary: build it first (cargo build --locked --bin neo-sessions)" >&2
  exit 1
fi
venv="$target_dir/python-verify-venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  "$here[test,fastapi]"
export NEO_SESSIONS_BIN="$binary"
cd "$here"
status=0
"$venv/bin/python" -m pytest -p no:cacheprovider "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$status"

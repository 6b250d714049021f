#!/usr/bin/env bash
# audiotag's one entry point: creates .venv with the pinned dependencies on first use, then runs
#   ./run.sh prepare train ensemble [options]   pipeline stages (python -m audiotag --help)
#   ./run.sh test [pytest args]                 the offline test suite
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV="${AUDIOTAG_VENV:-.venv}"
LOCK=requirements.lock
NODEPS_LOCK=requirements-nodeps.lock

find_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  echo "audiotag: Python 3.11 or newer is required (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

bootstrap() {
  local stamp="$VENV/.audiotag-installed"
  local wanted
  wanted=$(cat "$LOCK" "$NODEPS_LOCK" pyproject.toml | sha256sum | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    return 0
  fi
  local python
  python=$(find_python)
  if [ ! -x "$VENV/bin/python" ]; then
    echo "audiotag: creating $VENV with $python ($("$python" --version))" >&2
    "$python" -m venv "$VENV"
  fi
  echo "audiotag: installing the pinned dependencies from $LOCK into $VENV" \
    "(first run: about 6 GB with PyTorch, a few minutes)" >&2
  "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -r "$LOCK" >&2
  "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet --no-deps -r "$NODEPS_LOCK" >&2
  "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet --no-deps -e . >&2
  echo "$wanted" >"$stamp"
  echo "audiotag: environment ready" >&2
}

bootstrap

if [ "${1:-}" = "test" ]; then
  shift
  exec "$VENV/bin/python" -m pytest "$@"
fi
exec "$VENV/bin/python" -m audiotag "$@"

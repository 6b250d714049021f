#!/usr/bin/env bash
# audiotag's one entry point: creates .venv with the pinned dependencies on first use, then runs
#   ./run.sh prepare train ensemble [options]   pipeline stages (python -m audiotag --help)
#   ./run.sh test [pytest args]                 the offline test suite
#
# AUDIOTAG_VENV=/path/to/venv uses another environment (default: .venv in this checkout). Before
# anything runs, the environment's `audiotag` package must be this checkout's src/audiotag (the
# editable install `pip install -e .` makes): an environment whose `audiotag` comes from another
# clone, or from a non-editable install, would silently run that code. run.sh then refuses (exit
# status 2) and does not reinstall, since re-pointing a shared environment at this checkout would in
# turn break the clone it belongs to; the message says what to do: install this checkout into that
# environment (`"$AUDIOTAG_VENV/bin/python" -m pip install --no-deps -e .` here), or choose another
# AUDIOTAG_VENV. An environment without any `audiotag` (a half-finished install) gets this checkout
# installed. The check costs one Python start (the package is located, not imported).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV="${AUDIOTAG_VENV:-.venv}"
LOCK=requirements.lock
NODEPS_LOCK=requirements-nodeps.lock
HERE="$(pwd -P)/src/audiotag"

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

# The folder the environment's `audiotag` package resolves to (symlinks resolved), or nothing when
# it has none. find_spec locates the package without running its code.
installed_package() {
  "$VENV/bin/python" -c '
import importlib.util, os
spec = importlib.util.find_spec("audiotag")
if spec is not None and spec.origin:
    print(os.path.dirname(os.path.realpath(spec.origin)))
' 2>/dev/null || true
}

# Refuse an environment that runs another checkout's audiotag; $1 is installed_package's answer.
check_package() {
  local found="$1"
  [ -z "$found" ] || [ "$found" = "$HERE" ] && return 0
  cat >&2 <<MSG
audiotag: the environment $VENV runs another checkout's code: its audiotag package is
  $found
not this checkout's
  $HERE
Either install this checkout into that environment (the other checkout then runs this code too):
  "$VENV/bin/python" -m pip install --no-deps -e "$(pwd -P)"
or use an environment of this checkout's own: unset AUDIOTAG_VENV (.venv here) or set it to another path.
MSG
  exit 2
}

install_all() {
  local wanted="$1" python
  python=$(find_python)
  if [ ! -x "$VENV/bin/python" ]; then
    echo "audiotag: creating $VENV with $python ($("$python" --version))" >&2
    "$python" -m venv "$VENV"
  fi
  echo "audiotag: installing the pinned dependencies from $LOCK into $VENV" \
    "(first run: about 6 GB with PyTorch, a few minutes)" >&2
  "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -r "$LOCK" >&2
  "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet --no-deps -r "$NODEPS_LOCK" >&2
  install_self
  echo "$wanted" >"$VENV/.audiotag-installed"
  echo "audiotag: environment ready" >&2
}

install_self() {
  "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet --no-deps -e . >&2
}

bootstrap() {
  local stamp="$VENV/.audiotag-installed"
  local wanted found=""
  wanted=$(cat "$LOCK" "$NODEPS_LOCK" pyproject.toml | sha256sum | cut -c1-16)
  # An existing environment is checked before anything is installed into it (the one extra Python
  # start); a fresh one gets this checkout by construction and is checked once after installing.
  if [ -x "$VENV/bin/python" ]; then
    found=$(installed_package)
    check_package "$found"
  fi
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    if [ -z "$found" ]; then
      echo "audiotag: $VENV has no audiotag package; installing this checkout (pip install -e .)" >&2
      install_self
      found=$(installed_package)
      [ -n "$found" ] || {
        echo "audiotag: installing this checkout into $VENV did not make audiotag importable" >&2
        exit 2
      }
      check_package "$found"
    fi
    return 0
  fi
  install_all "$wanted"
  if [ -z "$found" ]; then
    check_package "$(installed_package)"
  fi
}

bootstrap

if [ "${1:-}" = "test" ]; then
  shift
  exec "$VENV/bin/python" -m pytest "$@"
fi
exec "$VENV/bin/python" -m audiotag "$@"

#!/usr/bin/env bash
# audiotag's one entry point: creates .venv with the pinned dependencies on first use, then runs
#   ./run.sh prepare train ensemble [options]   pipeline stages (python -m audiotag --help)
#   ./run.sh test [pytest args]                 the offline test suite
#   ./run.sh install augment|dev                an optional set of packages (see below)
#
# What gets installed: requirements.lock (+ requirements-nodeps.lock) before any command: what the
# pipeline needs. requirements-augment.lock (audiomentations, albumentations and what they pull in)
# on the first use of train.wave_augment or train.spec_augment_lib (the pipeline runs
# `run.sh install augment` itself: AUDIOTAG_RUN_SH), and for the tests. requirements-dev.lock (pytest,
# ruff, import-linter, ...) for `./run.sh test` only. Each set is reinstalled when its lock changes.
#
# Commands run in the folder run.sh was called from, so relative paths (--config my.yaml, -c
# data/birds.yaml, submit FILE) are the caller's; the workspace stays competition/ and submissions/
# of this checkout (AUDIOTAG_WORKSPACE, AUDIOTAG_SUBMISSIONS move them). `./run.sh test` runs in the
# checkout.
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
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"

VENV="${AUDIOTAG_VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac # a relative one is the checkout's, as before
LOCK=requirements.lock
NODEPS_LOCK=requirements-nodeps.lock
HERE="$ROOT/src/audiotag"

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
  "$VENV/bin/python" -m pip install --no-deps -e "$ROOT"
or use an environment of this checkout's own: unset AUDIOTAG_VENV (.venv here) or set it to another path.
MSG
  exit 2
}

# The stamp of what an installed set was installed from: the runtime set's files, plus the set's lock.
wanted_stamp() {
  local extra="${1:-}"
  (cd "$ROOT" && cat "$LOCK" "$NODEPS_LOCK" pyproject.toml ${extra:+"requirements-$extra.lock"}) |
    sha256sum | cut -c1-16
}

stamp_file() { echo "$VENV/.audiotag-installed${1:+-$1}"; }

pip_install() { (cd "$ROOT" && "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet "$@" >&2); }

install_all() {
  local wanted="$1" python extra
  python=$(find_python)
  if [ ! -x "$VENV/bin/python" ]; then
    echo "audiotag: creating $VENV with $python ($("$python" --version))" >&2
    "$python" -m venv "$VENV"
  fi
  echo "audiotag: installing the pinned dependencies from $LOCK into $VENV" \
    "(first run: about 6.1 GiB, mostly PyTorch with its CUDA libraries, a few minutes)" >&2
  pip_install -r "$LOCK"
  pip_install --no-deps -r "$NODEPS_LOCK"
  install_self
  echo "$wanted" >"$(stamp_file)"
  for extra in augment dev; do # optional sets installed before: brought up to date with the new pins
    if [ -f "$(stamp_file "$extra")" ]; then install_extra "$extra"; fi
  done
  echo "audiotag: environment ready" >&2
}

install_self() {
  pip_install --no-deps -e .
}

# An optional set: requirements-EXTRA.lock on top of the runtime pins (dev brings augment along).
install_extra() {
  local extra="$1"
  case "$extra" in
  augment | dev) ;;
  *)
    echo "audiotag: unknown set '$extra'; ./run.sh install augment|dev" >&2
    exit 2
    ;;
  esac
  if [ "$extra" = dev ]; then ensure_extra augment; fi
  case "${AUDIOTAG_OFFLINE:-}" in 1 | [Tt]rue | [Yy]es | [Oo]n | TRUE | YES | ON)
    echo "audiotag: offline mode (AUDIOTAG_OFFLINE) is on: not installing requirements-$extra.lock;" \
      "run ./run.sh install $extra with network access" >&2
    exit 2
    ;;
  esac
  echo "audiotag: installing the optional '$extra' packages from requirements-$extra.lock into $VENV" >&2
  pip_install -r "$LOCK" -r "requirements-$extra.lock"
  wanted_stamp "$extra" >"$(stamp_file "$extra")"
}

ensure_extra() {
  local stamp
  stamp="$(stamp_file "$1")"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$(wanted_stamp "$1")" ]; then
    install_extra "$1"
  fi
}

bootstrap() {
  local stamp
  local wanted found=""
  stamp="$(stamp_file)"
  wanted=$(wanted_stamp)
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

case "${1:-}" in
test)
  shift
  ensure_extra dev
  cd "$ROOT"
  exec "$VENV/bin/python" -m pytest "$@"
  ;;
install)
  shift
  [ $# -gt 0 ] || set -- augment
  for extra in "$@"; do ensure_extra "$extra"; done
  exit 0
  ;;
esac
export AUDIOTAG_RUN_SH="$ROOT/run.sh"
exec "$VENV/bin/python" -m audiotag "$@"

# Shared by scripts/demo and scripts/test (sourced, not run).

# make_venv: create .venv with $PYTHON (default python3) unless it exists.
make_venv() {
  [ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
}

# quiet_pip ARGS...: pip -q ARGS. pip's own exit status decides (a failed install stops
# the calling script); only the noise of this machine's unused local index locations is
# filtered out of what it prints.
quiet_pip() {
  local status=0
  .venv/bin/python -m pip -q "$@" > .venv/pip.log 2>&1 || status=$?
  grep -v -e '^WARNING: Location' -e 'is ignored: it is neither' .venv/pip.log || true
  return "$status"
}

#!/usr/bin/env bash
# Runtime step of action.yml (not a developer script): find a python3 >= 3.11 on PATH.
# Writes python=<path> and found=true|false to GITHUB_OUTPUT. When none is found, action.yml
# falls back to actions/setup-python.
set -euo pipefail
out="${GITHUB_OUTPUT:-/dev/stdout}"
for candidate in python3.14 python3.13 python3.12 python3.11 python3; do
  path=$(command -v "$candidate" 2>/dev/null) || continue
  # The interpreter itself, not a launcher such as a pyenv shim (which would run helpers with
  # the step's environment every time nix-job starts).
  real=$("$path" -I -c 'import sys; sys.exit(1) if sys.version_info < (3, 11) else print(sys.executable)' 2>/dev/null) || continue
  [ -x "$real" ] || continue
  echo "nix-job: using $real ($("$real" -I -c 'import platform; print(platform.python_version())'))"
  printf 'python=%s\nfound=true\n' "$real" >>"$out"
  exit 0
done
echo "nix-job: no python3 >= 3.11 on PATH; falling back to actions/setup-python"
printf 'python=\nfound=false\n' >>"$out"

#!/usr/bin/env bash
# Runtime step of action.yml (not a developer script): find a python3 >= 3.11 on PATH.
# Writes python=<path> and found=true|false to GITHUB_OUTPUT. When none is found, action.yml
# falls back to actions/setup-python.
set -euo pipefail
out="${GITHUB_OUTPUT:-/dev/stdout}"
for candidate in python3.14 python3.13 python3.12 python3.11 python3; do
  path=$(command -v "$candidate" 2>/dev/null) || continue
  if "$path" -I -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    echo "nix-job: using $path ($("$path" -I -c 'import platform; print(platform.python_version())'))"
    printf 'python=%s\nfound=true\n' "$path" >>"$out"
    exit 0
  fi
done
echo "nix-job: no python3 >= 3.11 on PATH; falling back to actions/setup-python"
printf 'python=\nfound=false\n' >>"$out"

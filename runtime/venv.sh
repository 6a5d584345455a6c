#!/usr/bin/env bash
# Runtime step of action.yml (not a developer script): the action's Python environment.
# Built from requirements/runtime.txt with --require-hashes, once per (lock, Python, arch), and
# kept under RUNNER_TOOL_CACHE when the runner has one (self-hosted runners keep it between
# jobs), else under RUNNER_TEMP. Built in a private directory and renamed into place, so a
# half-built environment is never used. Writes python=<venv python> to GITHUB_OUTPUT.
set -euo pipefail
base_python="${NIX_JOB_INTERNAL_BASE_PYTHON:?no base python was found or set up}"
action_path="${GITHUB_ACTION_PATH:?GITHUB_ACTION_PATH is not set}"
lock="$action_path/requirements/runtime.txt"
out="${GITHUB_OUTPUT:-/dev/stdout}"

ident=$("$base_python" -c 'import platform, sys; print(f"{sys.implementation.name}{sys.version_info[0]}.{sys.version_info[1]}-{platform.machine()}")')
key=$(cat "$lock" <(echo "$ident") | sha256sum | cut -c1-16)

root=""
for candidate in "${RUNNER_TOOL_CACHE:-}" "${RUNNER_TEMP:-}" "${TMPDIR:-/tmp}"; do
  [ -n "$candidate" ] || continue
  if mkdir -p "$candidate/nix-job" 2>/dev/null && [ -w "$candidate/nix-job" ]; then
    root="$candidate/nix-job"
    break
  fi
done
[ -n "$root" ] || { echo "::error title=nix-job: no writable directory::RUNNER_TOOL_CACHE, RUNNER_TEMP and TMPDIR are all unwritable"; exit 1; }

venv="$root/venv-$ident-$key"
if [ -f "$venv/.nix-job-complete" ] && "$venv/bin/python" -c 'import httpx, jinja2, tenacity' 2>/dev/null; then
  echo "nix-job: reusing the Python environment $venv"
else
  started=$(date +%s)
  tmp=$(mktemp -d "$root/.build-XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  "$base_python" -m venv "$tmp"
  "$tmp/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --require-hashes --no-deps --only-binary :all: -r "$lock"
  touch "$tmp/.nix-job-complete"
  rm -rf "$venv.old"
  [ -e "$venv" ] && mv "$venv" "$venv.old"
  mv "$tmp" "$venv"
  trap - EXIT
  rm -rf "$venv.old"
  echo "nix-job: created the Python environment $venv in $(( $(date +%s) - started )) s"
fi
printf 'python=%s\n' "$venv/bin/python" >>"$out"

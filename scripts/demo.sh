#!/usr/bin/env bash
# The main job: set the machine up, then validate and plan the example fleet.
# (Later: bring up the one-machine lab and exercise the fleet against it.)
# Any failing step stops the demo with a non-zero exit and says which step failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export PATH="$ROOT/.venv/bin:$PATH"

FLEET=inventories/example/example.fleet.yml

step() {
    printf '\n==> %s\n' "$*"
    "$@" || { rc=$?; printf '\n!!! demo FAILED (exit %d) at: %s\n' "$rc" "$*" >&2; exit "$rc"; }
}

step wakegrid validate "$FLEET"
step wakegrid plan "$FLEET" --start jellyfin
step wakegrid plan "$FLEET" --stop pve1
printf '\n==> demo OK\n'

#!/usr/bin/env bash
# The main job: set the machine up, validate and plan the example fleet, then build the
# one-machine lab from inventories/lab/lab.fleet.yml and show what runs and how to try it.
# Any failing step stops the demo with a non-zero exit and says which step failed.
# `wakegrid lab down inventories/lab/lab.fleet.yml` removes the lab again.
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

LAB=inventories/lab/lab.fleet.yml
step wakegrid lab up "$LAB"
step ansible all -i "$LAB" -m ansible.builtin.ping
printf '\n==> demo OK: the lab is up (wakegrid lab status %s; wakegrid lab down %s)\n' "$LAB" "$LAB"

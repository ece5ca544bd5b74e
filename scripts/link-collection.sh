#!/usr/bin/env bash
# Make this checkout the installed wakegrid.fleet collection, for Ansible run from the repository.
#
# Ansible finds collections only under <dir>/ansible_collections/<namespace>/<name>, so link the
# repository there. <dir> is .venv/collections (listed in ansible.cfg's collections_path): inside
# the venv, because the link points back at the repository root and a link cycle in the work tree
# would trip every tool that walks it. Idempotent; setup.sh runs it every time.
# Usage: bash scripts/link-collection.sh [COLLECTIONS_DIR]   (default: <repo>/.venv/collections)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$ROOT/.venv/collections}"
LINK="$DIR/ansible_collections/wakegrid/fleet"

mkdir -p "$(dirname "$LINK")"
if [[ -e "$LINK" && ! -L "$LINK" ]]; then
    printf '[link-collection] ERROR: %s exists and is not a symlink; move it away\n' "$LINK" >&2
    exit 1
fi
# -n: replace an existing link instead of creating one inside the directory it points to.
[[ "$(readlink "$LINK" 2>/dev/null)" == "$ROOT" ]] || ln -sfn "$ROOT" "$LINK"

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
# WireGuard hub and spokes, Caddy on the edge with every service's route (idempotent).
step env ANSIBLE_CONFIG="$ROOT/ansible.cfg" ansible-playbook -i "$LAB" playbooks/site.yml
step wakegrid reconcile --fleet "$LAB" --once --dry-run
# The reconciler on the lab's edge, as a user runs it there: it keeps the lab as the fleet says.
# It runs the lab fleet's wake chains (tests/bench/wake.py: stream = nas -> pve1 -> LXC jellyfin -> app,
# sandbox = pve1 -> VM vm-docker -> container sandbox -> app, both on_demand, only the lab's client
# allowed), and the edge hands it their requests while they sleep (routes.yml: Caddy's wake fallback).
WAKE_FLEET=/var/lib/wakegrid-lab/lab/wake.fleet.yml
step python tests/bench/wake.py --write-fleet "$WAKE_FLEET"
step env ANSIBLE_CONFIG="$ROOT/ansible.cfg" ansible-playbook -i "$WAKE_FLEET" playbooks/routes.yml
step wakegrid lab daemon install "$WAKE_FLEET" --lab "$LAB"
step wakegrid lab daemon restart "$LAB"
step wakegrid lab daemon status "$LAB"
# Every on-demand chain asleep (the daemon would do it itself after idle_after, 10 minutes).
step wakegrid shutdown --fleet "$WAKE_FLEET" pve1
step wakegrid shutdown --fleet "$WAKE_FLEET" nas
step wakegrid lab status "$LAB"
URL="$(wakegrid lab daemon url "$LAB")"
EDGE=10.231.255.2   # the edge on the lab's clients network
printf '\n==> demo OK: the lab is up, its reconciler runs on the edge (%s), stream and sandbox sleep\n' "$URL"
printf '    from the lab client, a browser-like request (the waiting page, 503 + Retry-After):\n'
printf "      docker exec wakegrid-lab-client curl -sk --resolve stream.lab.wakegrid.test:443:%s -H 'Accept: text/html' -D- https://stream.lab.wakegrid.test/some/page?x=1\n" "$EDGE"
printf '    and an API client, held until the whole chain is up, then the app'"'"'s own answer:\n'
printf "      docker exec wakegrid-lab-client curl -sk --max-time 150 --resolve sandbox.lab.wakegrid.test:443:%s -H 'Content-Type: application/json' -d '{\"hello\": \"world\"}' https://sandbox.lab.wakegrid.test/api/echo\n" "$EDGE"
printf '    watch the chain wake:  wakegrid lab daemon logs %s -n 20   ·   watch -n1 wakegrid lab status %s\n' "$LAB" "$LAB"
CERT=/var/cache/wakegrid-lab/daemon/tls.crt   # wakegrid lab daemon admin: the lab daemon's own certificate
TOKEN=/var/cache/wakegrid-lab/daemon/admin-token
printf '    its dashboard:         %s/admin (self-signed certificate; log in with the token in %s)\n' "$URL" "$TOKEN"
printf '    its API:               curl -s --cacert %s -H "Authorization: Bearer $(cat %s)" %s/api/status\n' "$CERT" "$TOKEN" "$URL"
printf '    its metrics:           curl -s --cacert %s -H "Authorization: Bearer $(cat %s)" %s/metrics | grep -E "^wakegrid_(wakes|boot)"\n' "$CERT" "$TOKEN" "$URL"
printf '    remove the lab:        wakegrid lab down %s\n' "$LAB"

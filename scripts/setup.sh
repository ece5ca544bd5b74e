#!/usr/bin/env bash
# Set up this machine for wakegrid: Debian packages, the project's .venv, a running Docker daemon.
#
# Idempotent and quick when nothing changed, so demo.sh and test.sh run it every time.
# Run as root on Debian (bookworm or later) with Python >= 3.11 as `python3`.
# Usage: bash scripts/setup.sh   (environment: PYTHON=python3.12 to pick the interpreter for a new .venv)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
# /usr/local/bin/docker may be an older or unrelated client: always talk to Debian's docker.io.
DOCKER=/usr/bin/docker

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# --- Debian packages -----------------------------------------------------------------------
# The controller needs Python (venv + headers for any sdist), git, and the lab's parts:
# Docker Engine, WireGuard (userspace wireguard-go: no kernel module is assumed), debootstrap
# to build the lab's images without a registry, busybox-static for tiny lab helpers, an SSH
# client to reach lab hosts, and the usual network tools. Chromium is the browser the waiting-page
# tests drive through Playwright (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: it never downloads its own).
PACKAGES=(python3 python3-venv python3-dev gcc git ca-certificates curl openssl
          docker.io wireguard-tools wireguard-go debootstrap busybox-static
          openssh-client iproute2 iputils-ping chromium
          docker-compose)

missing=()
for pkg in "${PACKAGES[@]}"; do
    # dpkg-query is local and fast: skip apt entirely (no network) when all are installed.
    [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    ((EUID == 0)) || die "run as root to install: ${missing[*]}"
    say "installing Debian packages: ${missing[*]}"
    # No prompts, and no needrestart scan of running services (nothing here needs a restart).
    export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
fi

# --- Python virtual environment ------------------------------------------------------------
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is $("$PYTHON" --version 2>&1); wakegrid needs Python >= 3.11"

# Reinstall only when pyproject.toml changed (its hash is kept in the venv) or the venv is gone.
stamp="$VENV/.wakegrid-setup"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    say "installing the wakegrid package and its test tools into $VENV"
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
    echo "$want" >"$stamp"
fi
# Ansible run from this checkout finds the collection through .venv/collections (ansible.cfg).
bash "$ROOT/scripts/link-collection.sh"

# --- Kernel limits ---------------------------------------------------------------------------
# Every lab host and Molecule instance runs systemd, which takes several inotify instances;
# the default 128 per user runs out with one lab plus a scenario (containers then hang at boot).
if (($(sysctl -n fs.inotify.max_user_instances) < 1024)); then
    ((EUID == 0)) || die "fs.inotify.max_user_instances is below 1024 and only root can raise it"
    sysctl -q -w fs.inotify.max_user_instances=1024
fi

# --- Docker daemon ---------------------------------------------------------------------------
LOG=/var/log/wakegrid-dockerd.log
if ! "$DOCKER" info >/dev/null 2>&1; then
    ((EUID == 0)) || die "the Docker daemon is not running and only root can start it"
    pid=""
    if [[ -d /run/systemd/system ]]; then
        say "starting Docker with systemd"
        systemctl start docker
    else
        # No init system (containers, CI sandboxes): run dockerd in its own session so it
        # outlives this script, and keep its log for post-mortems.
        say "starting dockerd (log: $LOG)"
        setsid dockerd >>"$LOG" 2>&1 </dev/null &
        pid=$!
    fi
    for _ in $(seq 60); do
        "$DOCKER" info >/dev/null 2>&1 && break
        [[ -z "$pid" ]] || kill -0 "$pid" 2>/dev/null || break   # dockerd died: stop waiting
        sleep 1
    done
    if ! "$DOCKER" info >/dev/null 2>&1; then
        [[ -z "$pid" ]] || tail -n 15 "$LOG" >&2
        die "the Docker daemon did not come up"
    fi
fi

say "ready: $("$VENV/bin/python" --version), $("$DOCKER" version -f 'Docker {{.Server.Version}}')"

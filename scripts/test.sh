#!/usr/bin/env bash
# Run the whole test suite, stage by stage, stopping at the first failure:
#   ruff      lint the Python package and tests (configuration: pyproject.toml)
#   lint      ansible-lint, production profile (configuration: .ansible-lint)
#   sanity    ansible-test sanity on the collection exactly as it ships (the built artifact)
#   pytest    tests/unit and tests/integration (integration tests need root and Docker)
#   molecule  every role scenario under extensions/molecule (systemd containers, Docker driver)
# Usage: bash scripts/test.sh [--only STAGE[,STAGE...]] [PYTEST_ARGS...]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STAGES=(ruff lint sanity pytest molecule)
only=""
pytest_args=()
while (($#)); do
    case "$1" in
        --only) only="${2:?--only needs a stage: ${STAGES[*]}}"; shift 2 ;;
        --only=*) only="${1#--only=}"; shift ;;
        *) pytest_args+=("$1"); shift ;;
    esac
done
for s in ${only//,/ }; do
    [[ " ${STAGES[*]} " == *" $s "* ]] || { echo "unknown stage '$s' (choose from: ${STAGES[*]})" >&2; exit 2; }
done

cd "$ROOT"
bash scripts/setup.sh
export PATH="$ROOT/.venv/bin:$PATH"

# ansible-test bootstraps pip in each sanity virtualenv with get-pip.py, downloaded from
# ci-files.testing.ansible.com unless cached. CI reaches only package registries, so cache a
# stand-in that gets pip from the interpreter's own ensurepip and the configured index instead.
write_get_pip_stand_in() {
    local version path
    version="$(python -c 'import types; from ansible_test._internal.python_requirements import get_venv_packages as g
print(g(types.SimpleNamespace(version="3"))["pip"])')"
    path="$HOME/.ansible/test/cache/get_pip_${version//./_}.py"
    [[ -e "$path" ]] && return
    mkdir -p "$(dirname "$path")"
    cat >"$path" <<'PY'
"""Stand-in for get-pip.py, written by wakegrid's scripts/test.sh: ansible-test runs it as
`python get_pip.py [pip options] PACKAGES... [--no-setuptools] [--no-wheel]`."""
import subprocess
import sys

# A subprocess, not ensurepip.bootstrap(): in-process it sets PIP_CONFIG_FILE=/dev/null,
# which would hide this machine's pip configuration (index, mirrors, certificates).
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"])
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + args))
PY
}

# pyenv's shims run only the selected versions: an installed python3.8 found through them fails
# under ansible-test (it drops PYENV_VERSION). Link each pyenv interpreter into DIR instead.
link_pyenv_pythons() {
    local dir=$1 py
    command -v pyenv >/dev/null || return 0
    for py in "$(pyenv root)"/versions/*/bin/python3.*; do
        [[ "${py##*/}" =~ ^python3\.[0-9]+$ && -x "$py" ]] && ln -sf "$py" "$dir/${py##*/}"
    done
    return 0
}

run_ruff() { ruff check --output-format=concise; }

run_pytest() { pytest "${pytest_args[@]}"; }

run_sanity() {
    # Build the artifact and install it, so that sanity sees exactly what ships (galaxy.yml's
    # build_ignore applies), under the ansible_collections/NS/NAME path ansible-test requires.
    # Outside the repository: ansible-test would otherwise list files through its git repo.
    local work
    work="$(mktemp -d "${TMPDIR:-/tmp}/wakegrid-sanity.XXXXXX")"
    # From $work: the repository's ansible.cfg lists the checkout itself as installed.
    (cd "$work" && ansible-galaxy collection build --output-path . "$ROOT" &&
        ansible-galaxy collection install --offline -p . wakegrid-fleet-*.tar.gz 2>&1 |
        grep -v 'is not part of the configured Ansible collections paths') || true
    [[ -f "$work/ansible_collections/wakegrid/fleet/MANIFEST.json" ]]
    write_get_pip_stand_in
    mkdir "$work/bin" && link_pyenv_pythons "$work/bin"
    # No --docker/--venv: their images come from registries CI cannot reach. The tests run on
    # every Python version found on this machine (a fresh Debian has just its own).
    echo "(sanity tree kept on failure: $work)"
    (cd "$work/ansible_collections/wakegrid/fleet" && PATH="$ROOT/.venv/bin:$work/bin:$PATH" ansible-test sanity --color no)
    rm -rf "$work"
}

# Molecule starts ansible-config itself (so .venv/bin goes on PATH) and finds scenarios from the
# repository root; the lab image the scenarios run is built (once) by the lab's own code.
run_molecule() {
    local scenario
    for scenario in extensions/molecule/*/molecule.yml; do
        scenario="$(basename "$(dirname "$scenario")")"
        printf -- '--- molecule scenario %s\n' "$scenario"
        molecule test -s "$scenario"
    done
}

# --offline: no version check against GitHub, no schema refresh, no Galaxy installs.
# ansible.cfg fails runs on an unparsed inventory (an invalid fleet must stop a play); the
# linter's syntax checks run without an inventory, so let them.
run_lint() { ANSIBLE_INVENTORY_UNPARSED_FAILED=false ansible-lint --offline; }

declare -A took=()
summary() {
    local s
    printf '\n== timings\n'
    for s in "${STAGES[@]}"; do
        if [[ -n "${took[$s]:-}" ]]; then printf '   %-7s %5ss\n' "$s" "${took[$s]}"; fi
    done
}
# Stages run under set -e (calling them from `if` or `||` would silently disable it), so a
# failure exits the script: report which stage failed from the EXIT trap.
stage=""
on_exit() {
    local rc=$?
    if ((rc)) && [[ -n "$stage" ]]; then
        took[$stage]=$((SECONDS - start))
        summary
        printf '\n!!! stage %s FAILED (exit %d)\n' "$stage" "$rc" >&2
    fi
}
trap on_exit EXIT

for s in "${STAGES[@]}"; do
    [[ -z "$only" || ",$only," == *",$s,"* ]] || continue
    printf '\n==================== %s ====================\n' "$s"
    stage=$s start=$SECONDS
    "run_$s"
    took[$s]=$((SECONDS - start)) stage=""
    printf -- '--- %s passed (%ss)\n' "$s" "${took[$s]}"
done
summary
printf '== all selected stages passed\n'

"""plugins/module_utils/fleet_entries.py: node names and secrets of the pre-filled fleet entries."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from wakegrid.model import RESERVED_GROUPS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_collection import module_utils  # the helper next to this file, whatever the rootdir or import mode

fe = module_utils("fleet_entries")


def test_reserved_names_are_the_fleet_models():
    # The modules cannot import the reconciler on a managed host: the two lists must stay equal.
    assert fe.RESERVED_FLEET_NAMES == RESERVED_GROUPS


@pytest.mark.parametrize(
    ("raw", "taken", "expected"),
    [
        ("sandbox", set(), "sandbox"),
        ("sandbox", {"sandbox"}, "sandbox-vm-docker"),
        ("sandbox", {"sandbox", "sandbox-vm-docker"}, "sandbox-vm-docker-2"),
        ("/media stack!", set(), "media-stack"),
        ("--", set(), "container"),
        (None, set(), "container"),
        ("containers", set(), "containers-vm-docker"),  # a group the inventory plugin creates
    ],
)
def test_suggest_name(raw, taken, expected):
    suggestion = fe.suggest_name(raw, "vm-docker", set(taken), "container")
    assert suggestion == expected and fe.FLEET_NAME_RE.match(suggestion)


def test_secret_values_in_lists_and_dicts():
    nodes = {"a": {"wol": [{"secureon": "x"}, {"password": ""}]}, "b": {"private_key": {"env": "KEY"}}}
    assert fe.fleet_secret_values(nodes) == ["x"]

"""Shared fixtures for the fleet model and planner unit tests."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from wakegrid.model import Fleet, load_fleet, parse_fleet

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_FLEET = REPO / "inventories" / "example" / "example.fleet.yml"


@pytest.fixture(scope="session")
def example_fleet() -> Fleet:
    return load_fleet(EXAMPLE_FLEET)


@pytest.fixture
def example_data() -> dict[str, Any]:
    """The example fleet as plain data, free to modify before :func:`build_fleet`."""
    return copy.deepcopy(yaml.safe_load(EXAMPLE_FLEET.read_text()))


@pytest.fixture
def build_fleet() -> Callable[[dict[str, Any]], Fleet]:
    """Validate fleet data through the same path as a file (both passes)."""

    def build(data: dict[str, Any]) -> Fleet:
        return parse_fleet(yaml.safe_dump(data, sort_keys=False), source="<test>")

    return build

"""Suite-wide rules.

In CI (``CI`` set to a true value, as root with Docker and the lab's packages installed by
``scripts/setup.sh``) nothing may be skipped: a test that would skip there is a missing install
step or a broken fixture, so it is reported as a failure. That holds for skips at collection
time too (``pytest.importorskip`` or ``pytest.skip(allow_module_level=True)`` at module level),
which never reach the per-test reports. ``CI=false``, ``CI=0``, ``CI=no``, ``CI=off`` and an
empty ``CI`` are not CI.
"""

from __future__ import annotations

import os

import pytest

_NOT_CI = {"", "0", "false", "no", "off"}


def in_ci() -> bool:
    # CI systems set CI=true (or 1, or their own name); only an explicit "no" value turns it off.
    return os.environ.get("CI", "").strip().lower() not in _NOT_CI


def _skip_reason(longrepr) -> str:
    return longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and in_ci():
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {_skip_reason(report.longrepr)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci():
        report.outcome = "failed"
        report.longrepr = (
            f"{collector.nodeid} skipped at collection in CI, where every test must run: "
            f"{_skip_reason(report.longrepr)}"
        )

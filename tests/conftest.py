"""Suite-wide rules.

In CI (``CI`` set, as root with Docker and the lab's packages installed by
``scripts/setup.sh``) nothing may be skipped: a test that would skip there is a
missing install step or a broken fixture, so it is reported as a failure.
"""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {reason}"

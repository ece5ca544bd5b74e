"""The suite's own rules, each proven on a tiny suite run by pytester under the repository's conftest.

- tests/conftest.py: in CI every skip is a failure, at collection time as at run time; ``CI`` set
  to a false value is not CI.
- tests/integration/conftest.py: the ``lab`` marker goes to the tests that use the shared lab
  (its ``lab`` fixture, directly or through other fixtures), wherever they are, and only to them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parents[1]
CONFTEST = TESTS / "conftest.py"
INTEGRATION_CONFTEST = TESTS / "integration" / "conftest.py"

SUITE = {
    "test_module_importorskip": """
        import pytest
        pytest.importorskip("wakegrid_no_such_module")

        def test_never_collected():
            pass
    """,
    "test_module_skip": """
        import pytest
        pytest.skip("no tool here", allow_module_level=True)

        def test_never_collected():
            pass
    """,
    "test_runtime": """
        import pytest

        def test_passes():
            pass

        def test_skips_at_run_time():
            pytest.skip("no engine here")

        @pytest.mark.skipif(True, reason="marked off")
        def test_skipif_mark():
            pass

        @pytest.fixture
        def engine():
            pytest.skip("fixture cannot build it")

        def test_skips_in_a_fixture(engine):
            pass

        @pytest.mark.xfail(reason="known bug")
        def test_expected_failure():
            assert False
    """,
}


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(**SUITE)
    return pytester


def run(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None) -> pytest.RunResult:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    # Collection failures must not stop the run: every outcome is counted. Without hypothesis's
    # plugin a failing inner run takes 0.01 s instead of 2 s.
    return suite.runpytest(
        "-rA", "--continue-on-collection-errors", "-p", "no:cacheprovider", "-p", "no:hypothesispytest"
    )


@pytest.mark.parametrize("ci", ["true", "1", "woodpecker"])
def test_in_ci_every_skip_fails_at_collection_and_at_run_time(suite, monkeypatch, ci):
    result = run(suite, monkeypatch, ci)
    # a skip in the test body fails it; one in setup (mark, fixture) or collection is an error
    result.assert_outcomes(passed=1, failed=1, errors=4, xfailed=1)
    result.stdout.fnmatch_lines_random(
        [
            "FAILED test_runtime.py::test_skips_at_run_time - skipped in CI, where every test must run*no engine here",
            "ERROR test_runtime.py::test_skipif_mark - skipped in CI*marked off",
            "ERROR test_runtime.py::test_skips_in_a_fixture - skipped in CI*fixture cannot build it",
            "ERROR test_module_importorskip.py - *at collection in CI*could not import *wakegrid_no_such_module*",
            "ERROR test_module_skip.py - *skipped at collection in CI, where every test must run: *no tool here",
            "PASSED test_runtime.py::test_passes",
            "XFAIL test_runtime.py::test_expected_failure*",
        ]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_outside_ci_skips_stay_skips(suite, monkeypatch, ci):
    result = run(suite, monkeypatch, ci)
    # 3 skipped tests + the 2 skipped modules
    result.assert_outcomes(passed=1, skipped=5, xfailed=1)
    assert "skipped in CI" not in result.stdout.str()
    assert result.ret == pytest.ExitCode.OK


LAB_SUITE = {
    "test_uses_the_lab": """
        import pytest

        @pytest.fixture
        def cut_site(lab):
            return lab

        def test_direct(lab):
            pass

        def test_through_a_fixture(cut_site):
            pass

        def test_on_loopback(tmp_path):
            pass
    """,
    "test_own_lab": """
        import pytest

        @pytest.fixture
        def lab():
            return "network namespaces of this module, not the shared lab"

        def test_with_its_own_lab(lab):
            pass
    """,
    "test_extended_lab": """
        import pytest

        @pytest.fixture
        def lab(lab):
            return lab

        def test_with_the_shared_lab_extended(lab):
            pass
    """,
}


def test_only_tests_using_the_shared_lab_fixture_are_marked_lab(pytester: pytest.Pytester):
    pytester.makeconftest(INTEGRATION_CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers =\n    lab: uses the shared lab\n")
    pytester.makepyfile(**LAB_SUITE)
    marked = pytester.runpytest("--collect-only", "-q", "-m", "lab", "-p", "no:hypothesispytest")
    assert sorted(line for line in marked.outlines if "::" in line) == [
        "test_extended_lab.py::test_with_the_shared_lab_extended",
        "test_uses_the_lab.py::test_direct",
        "test_uses_the_lab.py::test_through_a_fixture",
    ]
    unmarked = pytester.runpytest("--collect-only", "-q", "-m", "not lab", "-p", "no:hypothesispytest")
    assert sorted(line for line in unmarked.outlines if "::" in line) == [
        "test_own_lab.py::test_with_its_own_lab",
        "test_uses_the_lab.py::test_on_loopback",
    ]

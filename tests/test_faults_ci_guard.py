"""CI cannot pass vacuously: a skipped NAT-lab test fails on a CI machine that can run it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.natlab.ci_guard import LAB_TOOLS, lab_expected, skip_is_failure
from tests.natlab.lab import REPO

ALL_TOOLS = lambda tool: f"/usr/bin/{tool}"  # noqa: E731
NO_TURN = lambda tool: None if tool == "turnserver" else f"/usr/bin/{tool}"  # noqa: E731


@pytest.mark.parametrize("env, euid, which, expected", [
    ({"CI": "true"}, 0, ALL_TOOLS, True),
    ({"CI": "1"}, 0, ALL_TOOLS, True),
    ({}, 0, ALL_TOOLS, False),                    # a developer's machine: skips are fine
    ({"CI": ""}, 0, ALL_TOOLS, False),
    ({"CI": "false"}, 0, ALL_TOOLS, False),
    ({"CI": "true"}, 1000, ALL_TOOLS, False),     # not root: the lab cannot run
    ({"CI": "true"}, 0, NO_TURN, False),          # a lab tool missing: the skip is honest
])
def test_lab_is_expected_only_on_ci_as_root_with_every_tool(env, euid, which, expected):
    assert lab_expected(env, euid, which) is expected


def test_only_skipped_netns_tests_that_are_not_xfail_become_failures():
    ci = {"CI": "true"}
    assert skip_is_failure(True, True, False, ci, 0, ALL_TOOLS)
    assert not skip_is_failure(False, True, False, ci, 0, ALL_TOOLS)  # not a lab test
    assert not skip_is_failure(True, False, False, ci, 0, ALL_TOOLS)  # it ran
    assert not skip_is_failure(True, True, True, ci, 0, ALL_TOOLS)    # an expected failure
    assert not skip_is_failure(True, True, False, {}, 0, ALL_TOOLS)


def _run_pytest(tmp_path, env_ci: str | None) -> subprocess.CompletedProcess:
    """Run a tiny suite with one skipping netns test under the guard plugin."""
    (tmp_path / "test_lab_skips.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.netns
        def test_lab_in_body():
            pytest.skip("lab not available")

        @pytest.fixture
        def lab():
            pytest.skip("fixture cannot build the lab")

        @pytest.mark.netns
        def test_lab_in_fixture(lab):
            pass

        def test_not_a_lab_test():
            pytest.skip("unrelated skip")
    """))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if env_ci is not None:
        env["CI"] = env_ci
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.natlab.ci_guard", "-p", "no:cacheprovider",
         "-c", os.devnull, "--rootdir", str(tmp_path), "-o", "markers=netns",
         str(tmp_path / "test_lab_skips.py")],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


@pytest.mark.skipif(not lab_expected({"CI": "1"}, os.geteuid()),
                    reason=f"the plugin acts only as root with {', '.join(LAB_TOOLS)} on PATH")
def test_the_plugin_fails_skipped_lab_tests_on_ci_and_leaves_other_runs_alone(tmp_path):
    on_ci = _run_pytest(tmp_path, "true")
    assert on_ci.returncode == 1, on_ci.stdout
    # a skip in the test body fails it; a skip in a fixture becomes an error: both red
    assert "1 failed, 1 skipped, 1 error" in on_ci.stdout, on_ci.stdout
    assert "a skip here would let CI pass without the lab" in on_ci.stdout
    off_ci = _run_pytest(tmp_path, None)
    assert off_ci.returncode == 0, off_ci.stdout
    assert "3 skipped" in off_ci.stdout, off_ci.stdout

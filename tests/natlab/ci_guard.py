"""CI must not pass vacuously: on a CI machine that can run the NAT lab, a lab test that
skips is a failure.

A skipped ``netns`` test usually means "this machine cannot build namespaces", which is
fine on a laptop. On CI, running as root with the lab's tools installed, the same skip
means the lab silently stopped running (a broken fixture, a missing import, a
``skipif`` that became always-true) and a green run would prove nothing. The decision is a
pure function (:func:`skip_is_failure`) so it can be tested without a CI machine; the
pytest hook only applies it. ``tests/conftest.py`` registers this module as a plugin.
"""

from __future__ import annotations

import os
import shutil
from typing import Callable, Mapping

import pytest

#: What the lab needs on PATH (the same list :func:`tests.natlab.lab.missing_requirements`
#: checks): with all of them present and root, nothing legitimate makes a lab test skip.
LAB_TOOLS = ("ip", "iptables", "conntrack", "turnserver")
MARKER = "netns"


def lab_expected(env: Mapping[str, str], euid: int,
                 which: Callable[[str], str | None] = shutil.which) -> bool:
    """True when this run is CI (``CI`` set and not empty/false) on root with every lab tool."""
    ci = env.get("CI", "").strip().lower()
    if ci in ("", "0", "false", "no"):
        return False
    return euid == 0 and all(which(tool) for tool in LAB_TOOLS)


def skip_is_failure(marked_netns: bool, skipped: bool, xfail: bool, env: Mapping[str, str],
                    euid: int, which: Callable[[str], str | None] = shutil.which) -> bool:
    """Whether a report must be turned from skipped into failed."""
    return marked_netns and skipped and not xfail and lab_expected(env, euid, which)


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not skip_is_failure(item.get_closest_marker(MARKER) is not None, rep.skipped,
                           hasattr(rep, "wasxfail"), os.environ, os.geteuid()):
        return
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    rep.outcome = "failed"
    rep.longrepr = (f"netns test skipped on CI, which runs as root with the lab's tools "
                    f"({', '.join(LAB_TOOLS)}): a skip here would let CI pass without the lab. "
                    f"Skip reason: {reason}")

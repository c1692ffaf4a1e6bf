import os

import pytest
from hypothesis import HealthCheck, settings

from tests.daemons import Cluster
from tests.natlab import ci_guard

# Fuzzing budgets (tests/test_fuzz_*.py): CI runs a few hundred examples per decoder,
# `make fuzz` (HYPOTHESIS_PROFILE=fuzz) at least 10,000. No deadline: the machine is shared
# and a slow example is not a bug; a wrong exception is.
_FUZZ_SETTINGS = dict(deadline=None, print_blob=True,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                             HealthCheck.filter_too_much])
settings.register_profile("ci", max_examples=300, **_FUZZ_SETTINGS)
settings.register_profile("fuzz", max_examples=10_000, **_FUZZ_SETTINGS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config):
    # A netns test that skips on a CI machine able to run the lab fails instead.
    if not config.pluginmanager.is_registered(ci_guard):
        config.pluginmanager.register(ci_guard, "sedma-ci-guard")


@pytest.fixture
def cluster(tmp_path, request):
    """Daemons started by the test; all killed afterwards, logs shown on failure."""
    c = Cluster(tmp_path)
    yield c
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(c.logs())
    c.cleanup()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)

import pytest

from tests.daemons import Cluster


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

"""The local-mesh launcher never leaves a daemon behind, even when start-up fails."""

import pytest

from node.localmesh import DaemonProc


def test_a_daemon_that_is_not_ready_in_time_is_killed(tmp_path):
    node = DaemonProc(tmp_path / "slow", "slow")
    with pytest.raises(TimeoutError):
        node.start(timeout=0.001)
    assert node.proc.poll() is not None      # reaped, not left running

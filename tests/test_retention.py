"""What grows with time is bounded: finished jobs, their results, departed peers."""

from __future__ import annotations

import time

import numpy as np
import pytest

from nat.connector import Connector, ConnectorConfig, LinkOutcome
from node.config import ConfigError, build_config, parse_duration
from node.memory.dualmemory import DualMemory
from node.work.retention import JobStamp, Retention, expired
from tests.inproc import running_daemon


def test_old_jobs_and_jobs_beyond_the_count_expire_but_running_ones_never():
    now = 10_000.0
    jobs = [JobStamp(f"j{i}", now - i * 10) for i in range(10)] + [JobStamp("run", None)]
    assert expired(jobs, now, Retention(max_age=45, max_count=100)) == ["j5", "j6", "j7",
                                                                        "j8", "j9"]
    assert expired(jobs, now, Retention(max_age=1e9, max_count=3)) == [f"j{i}"
                                                                       for i in range(3, 10)]
    assert "run" not in expired(jobs, now + 1e9, Retention(max_age=1, max_count=1))
    with pytest.raises(ValueError):
        Retention(max_age=0)


def test_retention_flags_parse_durations():
    assert parse_duration("24h") == 86400 and parse_duration("90m") == 5400
    assert parse_duration(12) == 12.0
    cfg = build_config(None, {"job_retention": "2h", "job_retention_count": 5})
    assert (cfg.job_retention, cfg.job_retention_count) == (7200.0, 5)
    with pytest.raises(ConfigError):
        build_config(None, {"job_retention": "soon"})
    with pytest.raises(ConfigError):
        build_config(None, {"job_retention_count": 0})


async def test_a_daemon_forgets_expired_jobs_with_their_results_and_rows(tmp_path):
    a = np.ones((8, 4), np.float32)
    b = np.ones((4, 3), np.float32)
    async with running_daemon(tmp_path, job_retention_count=2) as d:
        ids = []
        for _ in range(4):
            job = await d.jobs.submit_matmul(a, b, None, 0)
            await d.jobs.wait(job.id, 30)
            assert job.state == "done", job.error
            ids.append(job.id)
        results = d.data_dir / "results"
        assert {p.stem for p in results.glob("*.npy")} == set(ids)
        await d.housekeeping()
        assert set(d.jobs.jobs) == set(ids[2:])
        assert {p.stem for p in results.glob("*.npy")} == set(ids[2:])
        rows = d.db.call(lambda c: c.execute("SELECT id FROM jobs").fetchall())
        assert {r[0] for r in rows} == set(ids[2:])
        np.testing.assert_array_equal(await d.jobs.result(ids[3]), a @ b)
        (results / "stray.npy").write_bytes(b"left by a crash")
        d.mesh.advert_seen["departed-long-ago"] = 1.0           # forgotten by the membership
        d.memory.record_share("departed-long-ago", 1e9, 1.0, True, now=1.0)
        await d.housekeeping()
        assert "departed-long-ago" not in d.mesh.advert_seen
        assert "departed-long-ago" not in d.memory.peers
    async with running_daemon(tmp_path, job_retention=1.0) as d:   # restart, 1 s retention
        assert not (d.data_dir / "results" / "stray.npy").exists()  # orphan removed at start
        assert await d.jobs.prune(now=time.time() + 2) == 2
        assert d.jobs.jobs == {}
        assert list((d.data_dir / "results").iterdir()) == []


def test_departed_peers_are_forgotten_by_the_dual_memory_after_a_while():
    mem = DualMemory()
    mem.record_share("stays", 1e9, 1.0, True, now=100)
    mem.record_share("gone", 1e9, 1.0, True, now=100)
    mem.record_share("recent", 1e9, 1.0, True, now=5000)
    mem.consolidate(now=5001)
    assert mem.forget_departed({"stays"}, now=5002, after=1000) == ["gone"]
    assert mem.peer_speed("gone") is None and "gone" not in mem.peers
    assert mem.peer_speed("stays") is not None          # a member is never forgotten
    assert mem.peer_speed("recent") is not None         # seen recently: kept for now
    assert sorted(mem.forget_departed(set(), now=7000, after=1000)) == ["recent", "stays"]
    assert mem.peer_patterns == {} and mem.peers == {}


def test_the_connector_forgets_departed_peers_link_outcomes():
    c = Connector("me", ConnectorConfig(), send_signal=None, on_link=None)
    c.outcomes = {"old": LinkOutcome("tcp", 1.0, at=100.0), "member": LinkOutcome("tcp", 1.0, at=100.0),
                  "new": LinkOutcome("failed", 1.0, "x", at=990.0)}
    assert c.forget({"member"}, older_than=60, now=1000.0) == ["old"]
    assert set(c.outcomes) == {"member", "new"}

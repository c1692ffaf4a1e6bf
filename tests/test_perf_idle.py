"""Idle-cost helpers of the daemon (issue 13). (The RTT ping rotation is gone: RTT samples
come from the membership's probes, tests/test_idle_mesh.py.)"""

from __future__ import annotations


def _prints_ok(code: str, timeout: float, env: dict | None = None) -> None:
    """Run ``code`` in a fresh interpreter (nothing imported yet, as in a new daemon) and
    require it to finish printing ``ok``; its stderr is the failure message."""
    import subprocess
    import sys

    from tests.daemons import ROOT, sedma_env
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=timeout, env=env or sedma_env(), cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def _mapped(pid: int, fragment: str) -> bool:
    """Whether a file whose path contains ``fragment`` is mapped into process ``pid``."""
    with open(f"/proc/{pid}/maps") as f:
        return any(fragment in line for line in f)


def _loaded(pid: int) -> set[str]:
    """Which of the lazily loaded packages' C extensions ``pid`` has mapped."""
    return {name for name in ("aiohttp", "multidict", "yarl") if _mapped(pid, f"/{name}/")}


def test_an_idle_daemon_loads_the_dashboard_only_when_someone_connects(cluster):
    import urllib.request

    node = cluster.add("n1", extra=["--capacity", "10"])   # dashboard on (127.0.0.1:0)
    url = node.status()["dashboard"]
    assert url and url.startswith("http://127.0.0.1:")
    assert _loaded(node.proc.pid) == set()         # bound, but aiohttp not imported
    with urllib.request.urlopen(url + "metrics", timeout=30) as r:   # first connection
        assert r.status == 200 and b"sedma_" in r.read()
    assert _loaded(node.proc.pid) == {"aiohttp", "multidict", "yarl"}
    with urllib.request.urlopen(url, timeout=10) as r:                 # and keeps serving
        assert r.status == 200


def test_the_lag_ticker_slows_down_when_the_loop_is_idle_and_speeds_up_for_work():
    from node.runtime.looplag import ACTIVE_CPU, IDLE_MAX_CPU, LagMonitor

    now = [100.0]
    lag = LagMonitor(interval=0.02, idle_interval=1.0, linger=10.0, clock=lambda: now[0])
    assert lag.next_interval(now[0]) == 0.02            # start-up counts as work
    for _ in range(600):                                 # 12 s of quiet fast ticks
        now[0] += 0.02
        lag.tick(0.02, now[0], now[0], cpu=0.0001)
    assert lag.next_interval(now[0]) == 1.0              # idle: one tick a second
    now[0] += 1.0
    lag.tick(1.0, now[0], now[0], cpu=0.003)             # gossip: a small bound, kept
    assert lag.report()["max_cpu_ms"] == 3.0 and lag.next_interval(now[0]) == 1.0
    now[0] += 1.0
    lag.tick(1.0, now[0], now[0], cpu=IDLE_MAX_CPU * 4)  # work started within this second
    r = lag.report()
    assert r["unmeasured"] == 1 and r["max_cpu_ms"] == 3.0   # a sum, not one callback: dropped
    assert lag.next_interval(now[0]) == 0.02             # and fast again at once
    now[0] += 0.02
    lag.tick(0.02, now[0], now[0], cpu=0.08)             # an 80 ms callback while fast
    assert lag.report()["max_cpu_ms"] == 80.0
    now[0] += 9.0
    lag.tick(0.02, now[0], now[0], cpu=ACTIVE_CPU * 2)   # still busy 9 s later
    now[0] += 9.0
    assert lag.next_interval(now[0]) == 0.02             # lingers 10 s after the last work
    now[0] += 1.1
    assert lag.next_interval(now[0]) == 1.0


def test_periodic_loops_share_one_beat():
    from node.runtime.beat import next_beat

    # loops of 1, 2 and 10 s started at different moments all wake at whole seconds
    assert next_beat(100.37, 1.0) == 101.0
    assert next_beat(100.37, 2.0) == 102.0
    assert next_beat(103.9, 10.0) == 110.0
    assert next_beat(101.0, 1.0) == 102.0          # on the beat: the next one
    assert next_beat(101.9995, 1.0) == 103.0       # a timer that fired a hair early
    assert next_beat(0.95, 1.0) == 2.0
    assert next_beat(0.0101, 0.02) == 0.04         # short periods: half a period of gap
    wakes = {next_beat(t / 10, p) for t in range(1000, 1010) for p in (1.0, 2.0, 5.0)}
    assert wakes <= {101.0, 102.0, 105.0}          # 30 loops, three instants


def test_advert_stats_keep_their_value_until_they_really_move():
    from node.daemon import settle_stats

    shown = {"resident_bytes": 50_000_000, "resource_utilisation": 8e-6,
             "throughput_per_s": 0.0, "latency_p50_ms": None, "latency_p99_ms": 20.0,
             "served_gflops": 12.0}
    idle = {"resident_bytes": 50_012_288, "resource_utilisation": 9e-6,
            "throughput_per_s": 0.0, "latency_p50_ms": None, "latency_p99_ms": 24.0,
            "served_gflops": 12.3}
    assert settle_stats(shown, idle) == shown           # noise: the advert stays as it is
    busy = dict(idle, resident_bytes=60_000_000, throughput_per_s=40.0, latency_p50_ms=3.0,
                latency_p99_ms=45.0)
    settled = settle_stats(shown, busy)
    assert settled["resident_bytes"] == 60_000_000      # 20 % more: the new value
    assert settled["throughput_per_s"] == 40.0 and settled["latency_p50_ms"] == 3.0
    assert settled["latency_p99_ms"] == 45.0            # RTT more than doubled
    assert settled["served_gflops"] == 12.0             # 2.5 %: still noise
    assert settle_stats({}, busy) == busy               # nothing advertised yet


async def _published_after_start(d, bound: float = 20.0):
    """The advert once its start-up figures are out: the first refresh carries the loop's
    measured busy share (None before), within ``advert_refresh`` (5 s) of the start."""
    import asyncio

    for _ in range(int(bound / 0.1)):
        if d.mesh.advert.stats.get("loop_busy") is not None:
            return d.mesh.advert
        await asyncio.sleep(0.1)
    raise AssertionError(f"no advert with the loop's figures within {bound} s")


def _advert_changes(before, after) -> dict:
    """What moved between two adverts, statistics by name (for a failure's message)."""
    def flat(advert) -> dict:
        d = advert.to_dict()
        return d | {f"stats.{k}": v for k, v in d.pop("stats").items()}
    old, new = flat(before), flat(after)
    return {k: (old.get(k), new.get(k)) for k in old.keys() | new.keys()
            if old.get(k) != new.get(k)}


async def test_an_idle_daemon_does_not_republish_its_advert(tmp_path, monkeypatch):
    import asyncio

    import node.metrics
    from tests.inproc import running_daemon

    # In process, the RSS the advert reports is pytest's: 800 tests in, other tests'
    # leftovers being freed moved it past its tolerance in CI. Not this daemon's doing.
    monkeypatch.setattr(node.metrics, "resident_memory", lambda: 60 << 20)
    async with running_daemon(tmp_path) as d:
        before = await _published_after_start(d)
        await asyncio.sleep(7)                          # past advert_refresh (5 s)
        after = d.mesh.advert                           # nothing worth gossiping changed
        assert after.version == before.version, _advert_changes(before, after)


async def test_housekeeping_on_the_compute_threads_is_not_advertised_as_load(
        tmp_path, monkeypatch):
    """A heap trim after every save (here each second, and slow: 1.5 s, spanning advert
    samples) is the daemon's own chore: its advert still shows no load and stays put."""
    import asyncio
    import time

    import node.daemon
    from tests.inproc import running_daemon

    trim = node.daemon.trim_heap
    trims = []
    monkeypatch.setattr(node.daemon, "trim_heap",
                        lambda: (trims.append(1), time.sleep(1.5), trim())[-1])
    async with running_daemon(tmp_path, memory_save_every=1.0) as d:
        before = await _published_after_start(d)
        for _ in range(40):                             # 4 s, each advert sample checked
            assert (d.executor.running, d.executor.queued, d.jobs.load()) == (0, 0, 0.0)
            await asyncio.sleep(0.1)
        after = d.mesh.advert
        assert len(trims) >= 3                          # the chore ran the whole time
        assert after.version == before.version, _advert_changes(before, after)
        assert (after.load, after.running, after.queue_depth) == (0.0, 0, 0)
        assert d.executor.utilisation() < 0.01          # nor in resource utilisation


def test_rtt_percentiles_follow_new_samples():
    import numpy as np

    from node.metrics import Metrics

    m = Metrics()
    assert m.latency() == {"p50_ms": None, "p99_ms": None}
    samples = [float(v) for v in range(1, 101)]
    for v in samples:
        m.rtt(v)
    first = m.latency()
    assert first == {"p50_ms": np.percentile(samples, 50), "p99_ms": np.percentile(samples, 99)}
    first["p50_ms"] = -1.0                      # a caller's copy, not the cache
    assert m.latency()["p50_ms"] == np.percentile(samples, 50)
    for _ in range(100):
        m.rtt(1000.0)                           # new samples move the percentiles
    assert m.latency()["p50_ms"] == np.percentile(samples + [1000.0] * 100, 50)


def test_an_idle_mesh_runs_without_numpy_until_the_first_array(cluster):
    """Start, join, gossip, ping and serve status/peers with numpy never imported (its
    BLAS alone is ~10 MB of RSS per daemon); the first job loads it, as it must."""
    import time

    import numpy as np

    from node.client import Client
    from node.localmesh import wait_for

    n1 = cluster.add("n1", extra=["--capacity", "10"])
    n2 = cluster.add("n2", extra=["--capacity", "10"])
    wait_for(lambda: n1.status()["members"] >= 2 and n2.status()["members"] >= 2, 60,
             "both daemons to see each other")
    time.sleep(3)                                   # adverts, pings and RTT percentiles
    assert len(n1.peers()) >= 1 and n2.status()["members"] == 2
    for node in (n1, n2):
        assert not _mapped(node.proc.pid, "_multiarray_umath"), node.name
        assert not _mapped(node.proc.pid, "openblas"), node.name
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    with Client(n1.socket) as c:
        job = c.submit_matmul(a, a.T.copy())
        assert c.wait(job, 120)["state"] == "done"
        np.testing.assert_allclose(c.result(job), a @ a.T, rtol=1e-5)
    assert _mapped(n1.proc.pid, "_multiarray_umath")   # the check can tell the difference


def test_wire_messages_without_arrays_do_not_import_numpy():
    """The codec recognises arrays only once numpy is loaded; a handshake-sized message and
    a large state sync round-trip through framing in a fresh interpreter with numpy still
    absent, and arrays still work."""
    code = (
        "import sys\n"
        "from protocol import codec\n"
        "from protocol.framing import Reassembler, fragments\n"
        "msg = {'t': 'ping', 'seq': 7, 'id': b'\\x01' * 16, 'f': 1.5, 'l': [1, 'x']}\n"
        "r = Reassembler()\n"
        "got = [r.feed(b''.join(frame)) for frame in fragments(3, codec.encode(msg))]\n"
        "assert codec.decode(got[-1]) == msg\n"
        "sync = {'members': ['m' * 100] * 3000}   # a large mesh's state sync, ~300 KB\n"
        "got = [r.feed(b''.join(frame)) for frame in fragments(5, codec.encode(sync))]\n"
        "assert isinstance(got[-1], bytearray) and codec.decode(got[-1]) == sync\n"
        "try:\n"
        "    codec.encode({'x': object()})\n"
        "except TypeError as e:\n"
        "    assert 'cannot encode object' in str(e)\n"
        "assert 'numpy' not in sys.modules, 'numpy imported'\n"
        "import numpy as np\n"
        "a = np.arange(6, dtype=np.int32).reshape(2, 3)\n"
        "back = codec.decode(b''.join(bytes(p) for p in codec.encode({'a': a, 'n': np.float64(2)})))\n"
        "assert (back['a'] == a).all() and back['n'] == 2.0\n"
        "print('ok')\n")
    _prints_ok(code, 60)


def test_reassembled_messages_small_and_large_are_byte_exact():
    """Small messages reassemble in a bytearray, large ones (numpy loaded, as here) in a
    numpy buffer; both give back exactly the bytes sent, and the limits still apply."""
    import numpy  # noqa: F401  (loaded, as on a node that does work)
    import pytest

    from protocol.errors import FrameError
    from protocol.framing import LARGE_MESSAGE, SMALL_MESSAGE, Reassembler, fragments

    for size in (0, 100, SMALL_MESSAGE, SMALL_MESSAGE + 1, LARGE_MESSAGE + 17):
        payload = bytes(i % 251 for i in range(size))
        r = Reassembler()
        got = None
        for frame in fragments(5, [payload], 16 << 10):
            got = r.feed(b"".join(frame))
        assert got is not None and bytes(got) == payload
        assert isinstance(got, bytearray) == (size <= SMALL_MESSAGE)
        assert r.buffered == 0
    r = Reassembler(max_message=SMALL_MESSAGE)
    frames = list(fragments(1, [bytes(SMALL_MESSAGE + 1)], 16 << 10))
    with pytest.raises(FrameError, match="exceeds"):
        r.feed(b"".join(frames[0]))


def test_rtt_percentiles_match_numpy_bit_for_bit_across_the_window():
    """The pure-Python percentile (no numpy at idle) equals np.percentile exactly, also
    once the 4096-sample window drops old samples."""
    import random

    import numpy as np

    from node.metrics import Metrics, percentile

    rng = random.Random(13)
    for _ in range(2000):
        values = sorted(rng.choice([rng.random() * 100, float(rng.randint(0, 5)),
                                    rng.expovariate(1) * 1e3])
                        for _ in range(rng.randint(1, 60)))
        q = rng.choice([0, 50, 99, 100, rng.random() * 100])
        assert percentile(values, q) == np.percentile(values, q)
    m = Metrics()
    for _ in range(5000):                      # more than the window holds
        m.rtt(rng.expovariate(1) * 10)
    window = list(m.latencies_ms)
    assert len(window) == 4096
    assert m.latency() == {"p50_ms": np.percentile(window, 50),
                           "p99_ms": np.percentile(window, 99)}


def test_lazy_numpy_loads_on_first_use_and_then_is_numpy_itself():
    """``compute.lazynumpy.np`` imports nothing until read; then it is a plain module with
    numpy's namespace (same objects, lazily imported submodules still reachable)."""
    code = (
        "import sys, types, threading\n"
        "from compute.lazynumpy import loaded, np\n"
        "import node.daemon, node.cli\n"
        "assert 'numpy' not in sys.modules and loaded() is None, 'imported early'\n"
        "out = []\n"
        "ts = [threading.Thread(target=lambda: out.append(np.float32)) for _ in range(4)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "import numpy\n"
        "assert loaded() is numpy and out == [numpy.float32] * 4\n"
        "assert type(np) is types.ModuleType and np.ndarray is numpy.ndarray\n"
        "assert np.linalg.norm(np.ones(4)) == 2.0 and np.testing is numpy.testing\n"
        "try:\n"
        "    np.no_such_name\n"
        "except AttributeError:\n"
        "    print('ok')\n")
    _prints_ok(code, 120)


def test_a_stall_report_names_where_the_loop_is_stuck(caplog):
    """The watchdog logs the innermost frames of the stuck thread (only those are looked
    up: the whole stack's files stayed in linecache for good)."""
    import linecache
    import logging
    import time

    from node.runtime.looplag import LagMonitor, StallReporter

    monitor = LagMonitor()
    reporter = StallReporter(monitor, threshold=0.05)

    def stuck_in_a_long_computation() -> None:
        end = time.monotonic() + 10           # no tick: the monitor's last tick ages,
        while time.monotonic() < end and not any(   # until the watchdog has spoken
                "stuck" in r.getMessage() for r in caplog.records):
            time.sleep(0.01)

    linecache.clearcache()
    with caplog.at_level(logging.WARNING, logger="sedma.looplag"):
        reporter.start()
        try:
            stuck_in_a_long_computation()
        finally:
            reporter.stop()
            reporter._thread.join(5)
    reports = [r.getMessage() for r in caplog.records if "stuck" in r.getMessage()]
    assert reports and "stuck_in_a_long_computation" in reports[0]
    assert reports[0].count('File "') <= 8
    outer = "/_pytest/main.py"                # a frame far out on this stack: not read in
    assert not any(name.endswith(outer) for name in linecache.cache)


def test_numpy_half_imported_by_another_thread_counts_as_not_loaded():
    """While a worker thread is still running numpy's ``__init__`` (onnx reading a model
    file does that), ``sys.modules['numpy']`` is a half-built module without ``ndarray``.
    The message checks on the event loop read ``numpy.ndarray`` for every list field of a
    gossip message: they must treat numpy as absent then, not raise (the first lean round's
    stall: the AttributeError killed the link's reader and the mesh suspected itself).
    A fake numpy whose body waits on an event makes the window deterministic."""
    code = (
        "import sys, threading, importlib.abc, importlib.util\n"
        "started, release = threading.Event(), threading.Event()\n"
        "class Slow(importlib.abc.Loader):\n"
        "    def create_module(self, spec): return None\n"
        "    def exec_module(self, module):\n"
        "        started.set(); release.wait(60)\n"
        "        module.ndarray = type('ndarray', (), {})\n"
        "        module.generic = type('generic', (), {})\n"
        "class Finder(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'numpy':\n"
        "            return importlib.util.spec_from_loader(name, Slow())\n"
        "sys.meta_path.insert(0, Finder())\n"
        "from compute.lazynumpy import loaded\n"
        "from protocol import codec, messages\n"
        "t = threading.Thread(target=lambda: __import__('numpy')); t.start()\n"
        "assert started.wait(60)\n"
        "assert 'numpy' in sys.modules and loaded() is None\n"
        "assert messages._check([1, 2], list[int], 'm.l') == [1, 2]\n"
        "msg = {'t': 'gossip', 'l': [1, 'x']}\n"
        "assert codec.decode(b''.join(bytes(p) for p in codec.encode(msg))) == msg\n"
        "try:\n"
        "    codec.encode({'x': object()})\n"
        "except TypeError as e:\n"
        "    assert 'cannot encode object' in str(e)\n"
        "release.set(); t.join(60)\n"
        "assert loaded() is sys.modules['numpy'] and hasattr(loaded(), 'ndarray')\n"
        "print('ok')\n")
    _prints_ok(code, 120)


def test_first_touch_of_numpy_on_an_event_loop_is_refused_in_strict_mode_and_ready_is_not():
    """The stand-in's guard: in strict mode (``SEDMA_NUMPY_ON_LOOP=raise``) reading ``np``
    first on an event loop's thread raises, and so does a numpy submodule numpy would load
    lazily there (numpy.ma); awaiting ``ready()`` loads numpy in a worker thread instead,
    after which the loop may use what it loaded."""
    from tests.daemons import sedma_env

    code = (
        "import asyncio, sys, threading\n"
        "from compute import lazynumpy\n"
        "from compute.lazynumpy import NumpyOnLoop, np\n"
        "async def on_loop():\n"
        "    try:\n"
        "        np.zeros\n"
        "    except NumpyOnLoop:\n"
        "        pass\n"
        "    else:\n"
        "        raise AssertionError('numpy imported on the loop')\n"
        "    assert 'numpy' not in sys.modules\n"
        "    seen = []\n"
        "    real = lazynumpy.load\n"
        "    lazynumpy.load = lambda: (seen.append(threading.current_thread()), real())\n"
        "    await lazynumpy.ready()\n"
        "    assert seen and seen[0] is not threading.main_thread(), seen\n"
        "    assert 'numpy.ma' not in sys.modules\n"
        "    try:\n"
        "        np.ma    # numpy loads it lazily: on the loop, also an error\n"
        "    except NumpyOnLoop:\n"
        "        pass\n"
        "    else:\n"
        "        raise AssertionError('numpy.ma imported on the loop')\n"
        "    return float(np.ones(3).sum())\n"
        "assert asyncio.run(on_loop()) == 3.0\n"
        "print('ok')\n")
    env = dict(sedma_env(), SEDMA_NUMPY_ON_LOOP="raise")
    _prints_ok(code, 120, env)


def test_a_model_deploy_and_stream_never_import_numpy_on_a_daemons_event_loop(
        cluster, tmp_path, monkeypatch):
    """The daemons run in strict mode: any path that would import numpy on the event loop
    raises (and the deploy or request fails). A model read from a file by the coordinator
    (onnx, numpy imported in a worker) deployed over three daemons, then requests through
    it: every answer exact, numpy loaded in every holder, and no daemon logs a loop import."""
    import numpy as np

    from compute.model import reference_forward
    from compute.modelfile import read_model
    from node.client import Client
    from tests.test_models_files import torch_like_mlp

    monkeypatch.setenv("SEDMA_NUMPY_ON_LOOP", "raise")
    cluster.start(3)
    cluster.wait_converged(alive=2)
    n1 = cluster.nodes[0]
    path = torch_like_mlp(tmp_path / "m.onnx", sizes=(64, 128, 10))
    model = read_model(path)
    with Client(n1.socket) as c:
        info = c.deploy("m", path, device="ideal", replicas=2)
        holders = {h for layer in info["layer_placement"] for hs in layer.values() for h in hs}
        for i in range(5):
            x = np.random.default_rng(i).standard_normal((3, 64)).astype(np.float32)
            y = c.infer("m", x)
            want = reference_forward(model, x)
            assert np.abs(y - want).max() <= 2e-5 * max(1.0, float(np.abs(want).max()))
    for node in cluster.nodes:
        log = node.log_path.read_text()
        assert "event loop thread" not in log and "NumpyOnLoop" not in log, node.name
        if node.id in holders:
            assert _mapped(node.proc.pid, "_multiarray_umath"), node.name


def _anon_kb(pid: int) -> dict[str, int]:
    """Resident kB of ``pid``'s private memory by kind: anonymous (anon, heap, and anonymous
    shared mappings such as reassembly mmaps, shown as /dev/zero) and the client's memfds."""
    out = {"anon": 0, "memfd": 0}
    kind = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                path = head[5] if len(head) > 5 else ""
                kind = ("memfd" if path.startswith("/memfd:")
                        else "anon" if path in ("", "[heap]", "/dev/zero") or
                        path.startswith("[anon") else None)
            elif head[0] == "Rss:" and kind:
                out[kind] += int(head[1])
    return out


def test_a_deploy_leaves_each_daemon_holding_its_blocks_and_nothing_more(cluster):
    """After a 64 MiB W is deployed over two daemons, each keeps its blocks' bytes (and
    numpy) in private memory, not a second copy of a block it received, and the daemon the
    client deployed through lets go of the client's shared-memory copy of W soon (issue 13:
    a 32 MiB copy and the 64 MiB memfd were each kept ~110 s in the first lean round)."""
    import numpy as np

    from node.client import Client
    from node.daemon import ARENA_MAX, TRIM_THRESHOLD
    from node.localmesh import wait_for

    n1 = cluster.add("n1", extra=["--capacity", "10"])
    n2 = cluster.add("n2", extra=["--capacity", "10"])
    wait_for(lambda: n1.status()["members"] >= 2 and n2.status()["members"] >= 2, 60,
             "both daemons to see each other")
    before = {n.name: _anon_kb(n.proc.pid)["anon"] for n in (n1, n2)}
    w = np.random.default_rng(3).standard_normal((4096, 4096)).astype(np.float32)
    with Client(n1.socket) as c:
        info = c.deploy("w", w, replicas=1)
    assert sorted(len(v) for v in info["placement"].values()) == [1, 1]
    wait_for(lambda: _anon_kb(n1.proc.pid)["memfd"] == 0, 20,
             "the coordinator to unmap the client's W")
    # kB: numpy's own anonymous memory (~6-8 MB, ~2.5 MB more when its import lands in a
    # second malloc arena) and the free memory each arena keeps at its top: far below a
    # second copy of a block (32 MiB)
    numpy_and_slack = (10 << 10) + ARENA_MAX * TRIM_THRESHOLD // 1024
    for node in (n1, n2):
        held = node.status()["memory"]["resident_blocks"] >> 10
        assert held >= 8 << 10, (node.name, held)                 # each holds a block
        grown = _anon_kb(node.proc.pid)["anon"] - before[node.name]
        assert grown <= held + numpy_and_slack, (node.name, grown, held)


def test_a_big_message_before_numpy_is_reassembled_in_private_huge_page_memory():
    """Before numpy is loaded, a message over LARGE_MESSAGE is received into an anonymous
    mapping. It must be *private* (a shared anonymous mapping never gets huge pages) and
    advised huge pages, so dropping it costs ~2 ms instead of the 130-190 ms of CPU that
    stalled a fresh peer's event loop on its first big share (tests/test_loop_lag.py)."""
    import ctypes

    import pytest

    from protocol.framing import anonymous_buffer

    mode = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    buf = anonymous_buffer(64 << 20)
    view = memoryview(buf)
    for off in range(0, len(buf), 1 << 20):          # the bytes arrive
        view[off:off + (1 << 20)] = b"\1" * (1 << 20)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    perms, huge_kb = "", 0
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                lo, hi = (int(v, 16) for v in head[0].split("-"))
                inside = lo <= addr < hi
                if inside:
                    perms = head[1]
            elif inside and head[0] == "AnonHugePages:":
                huge_kb = int(head[1])
    view.release()
    buf.close()
    assert perms.endswith("p"), perms                 # private, not shared
    if "[never]" in mode:
        pytest.skip("transparent huge pages are off on this kernel: 4 KiB pages it is")
    assert huge_kb > 0, "the mapping got no huge pages"


def test_a_zero_byte_array_from_a_peer_loads_numpy_off_the_loop_first():
    """An array of no bytes leaves no trace in the payload's length prefix, but decoding it
    still needs numpy: in strict mode, on an event loop, the message decodes (numpy loaded
    in a worker first), while a message without arrays decodes with numpy left unloaded."""
    import numpy as np

    from protocol.messages import encode_message
    from protocol.work import InferBlock
    from tests.daemons import sedma_env

    empty = b"".join(bytes(p) for p in encode_message(
        InferBlock(7, "w", 0, np.zeros((0, 3), np.float32), 5)))
    code = (
        "import asyncio, sys\n"
        "from protocol.messages import decode_message_on_loop, encode_message\n"
        "from protocol.work import GetPlan\n"
        f"empty = bytes.fromhex('{empty.hex()}')\n"
        "plain = b''.join(bytes(p) for p in encode_message(GetPlan(3, 'w')))\n"
        "async def main():\n"
        "    assert (await decode_message_on_loop(plain)) == GetPlan(3, 'w')\n"
        "    assert 'numpy' not in sys.modules\n"
        "    msg = await decode_message_on_loop(empty)\n"
        "    assert msg.x.shape == (0, 3) and str(msg.x.dtype) == 'float32', msg\n"
        "asyncio.run(main())\n"
        "print('ok')\n")
    _prints_ok(code, 120, dict(sedma_env(), SEDMA_NUMPY_ON_LOOP="raise"))

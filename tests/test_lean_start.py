"""What an idle daemon loads at start, and that what it leaves out loads on first use (issue 13).

Also ``hashlib`` (its OpenSSL binding ``_hashlib`` is ~0.6 MB of RSS; ``hmac`` and
``secrets`` import it): node ids hash with ``cryptography``'s SHA-256, random ids come
from ``os.urandom``, and the cluster-key and boot-id hashes import it where they run.
The model-file reader (``compute.modelfile``) is imported on the compute thread that
reads a file.

Every module an idle daemon imports stays resident for its whole life: the interpreter and
its imports are most of an idle daemon's RSS. These tests pin the start-up path's imports
so that a future module-level ``import statistics`` (decimal, fractions), ``import uuid``
(platform), ``from importlib import resources`` (tempfile, shutil, lzma, bz2, zipfile) or
``import threadpoolctl`` (ctypes scanning every loaded library) fails here, and check that
each deferred import still works where it is used.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.daemons import ROOT, sedma_env

#: Modules an idle daemon must not have imported after start: each is used only on a rare
#: path (a config file, a model file, a compute thread, the dashboard's first visitor, the
#: first array) that imports it there.
NOT_AT_START = ("numpy", "threadpoolctl", "statistics", "decimal", "fractions", "tomllib",
                "uuid", "platform", "tempfile", "shutil", "lzma", "bz2", "zipfile",
                "importlib.resources", "aiohttp", "onnx", "safetensors", "tracemalloc",
                "hashlib", "_hashlib", "hmac", "secrets", "compute.modelfile", "aiortc",
                "aioice")

#: C extensions of some of them: visible in /proc/PID/maps of a running daemon.
NOT_MAPPED = ("_decimal", "_lzma", "_bz2", "_uuid", "_multiarray_umath", "openblas",
              "threadpoolctl", "_hashlib", "aiortc", "av/")


def _python(code: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env or sedma_env(), cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_daemon_start_path_imports_none_of_the_heavy_modules():
    loaded = _python(
        "import sys\n"
        "import node.cli, node.daemon, uvloop\n"
        "node.cli.build_parser().parse_args(['daemon'])\n"
        f"print(' '.join(m for m in {NOT_AT_START!r} if m in sys.modules))")
    assert loaded == "", f"imported at start: {loaded}"


def test_the_check_sees_a_heavy_import():
    """The probe above can fail: importing one of the modules shows up."""
    loaded = _python("import sys, node.daemon, statistics\n"
                     f"print(' '.join(m for m in {NOT_AT_START!r} if m in sys.modules))")
    assert "statistics" in loaded.split() and "decimal" in loaded.split()


def test_an_idle_daemon_has_none_of_their_extensions_mapped(cluster):
    node = cluster.add("n1", extra=["--capacity", "10"])
    assert node.status()["members"] >= 1
    with open(f"/proc/{node.proc.pid}/maps") as f:
        maps = f.read()
    assert [name for name in NOT_MAPPED if name in maps] == []
    assert "_ssl" in maps            # the check reads real mappings (asyncio loads ssl)


def test_a_toml_config_file_still_loads(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('workers = 1\nrate_half_life_s = 30\n')
    out = _python("import sys\n"
                  "from node.config import load_file\n"
                  "assert 'tomllib' not in sys.modules\n"
                  f"kw = load_file({str(path)!r})\n"
                  "assert 'tomllib' in sys.modules\n"
                  "print(kw['workers'], kw['rate_half_life_s'])")
    assert out == "1 30"


def test_the_dashboards_median_is_statistics_median():
    import random
    import statistics

    from node.http.history import _median

    rng = random.Random(7)
    for n in (1, 2, 3, 10, 11, 300):
        values = [rng.random() for _ in range(n)]
        assert _median(values) == statistics.median(values)


def test_the_crossbar_normal_table_imports_statistics_on_first_use():
    out = _python("import sys\n"
                  "import compute.crossbar as cb\n"
                  "assert 'statistics' not in sys.modules\n"
                  "t = cb._normal_table()\n"
                  "print('statistics' in sys.modules, t.shape[0], abs(float((t * t).mean()) - 1) < 1e-3)")
    assert out == "True 65536 True"


def test_the_blas_cap_set_before_numpy_loads_holds_once_it_does():
    """The executor is made before numpy is imported (an idle daemon never imports it);
    the BLAS cap must still hold when numpy arrives, and threadpoolctl stays out until then.
    With one compute thread per core, BLAS gets one thread (and one buffer) per caller."""
    env = sedma_env()
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(var, None)
    out = _python(
        "import os, sys\n"
        "from compute.executor import Executor\n"
        "from compute import lazynumpy\n"
        "ex = Executor(workers=2, cores=2)\n"
        "assert 'threadpoolctl' not in sys.modules and 'numpy' not in sys.modules\n"
        "print(os.environ.get('OPENBLAS_NUM_THREADS'))\n"
        "lazynumpy.load()\n"
        "from threadpoolctl import threadpool_info\n"
        "print(max(i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'))\n"
        "print(ex.threads_in_use())\n", env=env)
    assert out.split() == ["1", "1", "2"]


def test_a_user_set_blas_variable_is_left_alone_and_the_cap_still_applies():
    env = sedma_env()
    env["OPENBLAS_NUM_THREADS"] = "2"
    out = _python(
        "import os\n"
        "from compute.executor import Executor\n"
        "from compute import lazynumpy\n"
        "ex = Executor(workers=2, cores=2)\n"
        "print(os.environ['OPENBLAS_NUM_THREADS'])\n"
        "lazynumpy.load()\n"
        "from threadpoolctl import threadpool_info\n"
        "print(max(i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'))\n",
        env=env)
    assert out.split() == ["2", "1"]


def test_after_load_runs_at_once_when_numpy_is_already_there():
    out = _python("import numpy\n"
                  "from compute import lazynumpy\n"
                  "seen = []\n"
                  "lazynumpy.after_load(lambda: seen.append(1))\n"
                  "print(len(seen))")
    assert out == "1"


def test_the_work_paths_make_their_ids_without_uuid():
    """Job and request ids come from os.urandom / secrets: uuid (and platform, which it
    imports) stay out of the daemon."""
    out = _python("import sys\n"
                  "from node.work import jobs, pipeline\n"
                  "print('uuid' in sys.modules)")
    assert out == "False"


def test_rssmap_groups_add_up_and_see_a_new_anonymous_buffer():
    """bench/rssmap.py, which the README's tables come from: its groups sum to the kernel's
    RSS and a freshly touched anonymous mapping lands in "anonymous"."""
    import importlib.util
    import mmap
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "rssmap", Path(__file__).resolve().parent.parent / "bench" / "rssmap.py")
    rssmap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rssmap)

    def rollup_rss() -> int:
        with open("/proc/self/smaps_rollup") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Rss:"))

    before = rssmap.breakdown(os.getpid())
    total = sum(v["rss"] for v in before.values())
    assert abs(total - rollup_rss()) < 4 << 20
    buf = mmap.mmap(-1, 16 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.write(b"x" * (16 << 20))           # touch every page
    after = rssmap.breakdown(os.getpid())
    assert after["anonymous"]["rss"] - before["anonymous"]["rss"] >= 15 << 20
    buf.close()


def test_node_ids_are_the_same_sha256_without_hashlib():
    """The id is on the wire and in every data dir: the hash moved libraries, not value."""
    import hashlib

    from protocol.identity import NODE_ID_CHARS, _ID_DOMAIN, node_id_for

    for key in (bytes(32), bytes(range(32)), os.urandom(32)):
        assert node_id_for(key) == hashlib.sha256(_ID_DOMAIN + key).hexdigest()[:NODE_ID_CHARS]


def test_a_cluster_key_still_gets_its_hashes():
    out = _python("import sys\n"
                  "from protocol.handshake import cluster_id_for, psk_for\n"
                  "assert 'hashlib' not in sys.modules\n"
                  "print(cluster_id_for(None), len(psk_for(b'k')), len(cluster_id_for(b'k')))\n"
                  "print('hashlib' in sys.modules)")
    assert out.split() == ["open", "32", "16", "True"]


def test_the_model_file_reader_is_imported_on_the_compute_thread(tmp_path):
    """Absent at start; the daemon's deploy-from-file path imports it on the thread that
    reads the file, not on the event loop's."""
    import numpy as np

    path = tmp_path / "w.npy"
    np.save(path, np.arange(12, dtype=np.float32).reshape(3, 4))
    out = _python(
        "import sys, threading\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "import node.daemon\n"
        "from node.work import models\n"
        "assert 'compute.modelfile' not in sys.modules\n"
        "seen = []\n"
        "class Spy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'compute.modelfile':\n"
        "            seen.append(threading.current_thread().name)\n"
        "sys.meta_path.insert(0, Spy())\n"
        "with ThreadPoolExecutor(1, thread_name_prefix='compute') as pool:\n"
        f"    model = pool.submit(models._read_model_file, models.Path({str(path)!r})).result()\n"
        "w = model.layers[0].weight\n"
        "print(seen, w.shape, float(w[2:3][0][3]))")
    assert out == "['compute_0'] (3, 4) 11.0"


def test_a_loop_stall_report_leaves_no_source_files_cached(tmp_path, caplog):
    """The stall watchdog formats the loop thread's stack with its source lines; the files
    it read for that must not stay in linecache (up to ~0.6 MB per daemon)."""
    import importlib.util
    import linecache
    import logging
    import threading
    import time

    from node.runtime.looplag import LagMonitor, StallReporter

    src = tmp_path / "stuckmodule.py"
    src.write_text("import time\n\ndef stuck(event):\n    event.wait(5)  # STUCK-HERE\n")
    spec = importlib.util.spec_from_file_location("stuckmodule", src)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    release = threading.Event()
    worker = threading.Thread(target=module.stuck, args=(release,))
    worker.start()
    monitor = LagMonitor(interval=0.02)            # never ticks: the "loop" is stuck
    reporter = StallReporter(monitor, threshold=0.05, loop_thread=worker.ident)
    try:
        with caplog.at_level(logging.WARNING, logger="sedma.looplag"):
            reporter.start()
            deadline = time.monotonic() + 5
            while "STUCK-HERE" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        reporter.stop()
        release.set()
        worker.join(5)
    assert "STUCK-HERE" in caplog.text          # the report did read the source line
    assert str(src) not in linecache.cache

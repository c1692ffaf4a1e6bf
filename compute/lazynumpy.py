"""numpy, imported where the first array is touched rather than when a module is imported.

An idle daemon (no blocks, no jobs) starts, joins, gossips, pings and answers ``status``
without a single array, yet importing numpy with its BLAS costs ~10 MB of RSS per process
(issue 13: 100 daemons on one machine). The modules that compute, store and encode arrays
write ``from compute.lazynumpy import np`` instead of ``import numpy as np``; ``np`` is a
stand-in module that imports numpy the first time one of its attributes is read, copies
numpy's namespace into itself and then turns into a plain module, so after that first
access ``np.foo`` costs exactly what it costs on numpy itself.

Why not ``importlib.util.LazyLoader``: it puts the lazy module in ``sys.modules`` under
the name ``numpy``, and on Python 3.11 every later ``import numpy`` anywhere (a library's,
a test's) reads the module's ``__spec__`` and so loads it at once. This stand-in is never
registered as ``numpy``: code that imports numpy itself is unaffected.

Code that only needs to *recognise* an array (the codec, message type checks) should not
touch ``np`` at all but use :func:`loaded`: if numpy was never imported, no value can be
an ndarray. :func:`loaded` answers None while numpy is still being imported by another
thread (e.g. onnx reading a model file in a worker): that half-built module has no
``ndarray`` yet, and reading it from the event loop raised ``AttributeError`` in the
message checks, which killed the link's reader -- the stall of issue 13's first lean
round (members suspected each other after the first model deploy).

Importing numpy costs 0.1-2 s of CPU (its C extensions, OpenBLAS's thread start-up) on a
loaded machine: never on the event loop, where it would starve membership probes. The
daemon awaits :func:`ready` (the import in a worker thread) as soon as a message says it
carries arrays, before decoding it. A first touch of ``np`` on an event loop's thread is
logged as a warning with its cost; ``SEDMA_NUMPY_ON_LOOP=raise`` (tests that prove no
path does it) makes it an error, and so is loading any numpy submodule on a loop thread
(numpy loads some lazily: ``np.median``'s first call imports ``numpy.ma``, 0.1-0.3 s).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
import threading
import time
import types
from typing import Any, Callable

log = logging.getLogger("sedma.lazynumpy")

_LOCK = threading.Lock()   # two threads touching np first: one import, one namespace copy


class NumpyOnLoop(RuntimeError):
    """numpy's first import was attempted on an event loop thread (strict mode only)."""


def _on_loop_thread() -> bool:
    return asyncio._get_running_loop() is not None


class _LazyNumpy(types.ModuleType):
    """Stands for numpy until an attribute is read; then becomes a copy of its namespace."""

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not yet in this module's dict, i.e. before the first load
        # (afterwards the class is plain ModuleType and numpy's own module __getattr__,
        # copied with the namespace, serves its lazily imported submodules).
        if type(self) is _LazyNumpy and _on_loop_thread():
            _first_touch_on_loop(name)
        load()
        return getattr(self, name)


def _first_touch_on_loop(name: str) -> None:
    if loaded() is not None:      # imported already (another thread): the switch is a copy
        return
    if os.environ.get("SEDMA_NUMPY_ON_LOOP") == "raise":
        raise NumpyOnLoop(f"numpy.{name} read first on the event loop thread")
    start = time.perf_counter()
    load()
    log.warning("numpy imported on the event loop thread (np.%s, %.0f ms): a path that "
                "does not await compute.lazynumpy.ready() first", name,
                (time.perf_counter() - start) * 1e3, stack_info=True)


np: Any = _LazyNumpy("numpy")


def _audit(event: str, args: tuple) -> None:
    """Strict mode: any numpy module loaded on an event loop's thread is an error, also one
    numpy itself loads lazily later (``np.median`` importing ``numpy.ma`` on first use)."""
    if event == "import" and isinstance(args[0], str) and (
            args[0] == "numpy" or args[0].startswith("numpy.")) and _on_loop_thread():
        raise NumpyOnLoop(f"module {args[0]} loaded on the event loop thread")


if os.environ.get("SEDMA_NUMPY_ON_LOOP") == "raise":   # tests only: the hook sees every import
    sys.addaudithook(_audit)


#: numpy submodules that numpy loads only on first attribute access and that the daemon's
#: loop-side code reaches (layer seeds and read streams: ``np.random.SeedSequence``):
#: imported with numpy, off the loop, so their first use does not import them there.
PRELOAD = ("numpy.random",)


#: Called once numpy is imported, on the thread that imported it (never the loop's):
#: settings that only mean something with numpy loaded (the BLAS thread limit).
_AFTER_LOAD: list[Callable[[], None]] = []


def after_load(fn: Callable[[], None]) -> None:
    """Run ``fn`` once numpy is loaded: now if it is, else right after :func:`load`
    imports it (so its own imports, e.g. threadpoolctl, stay off an idle daemon too)."""
    with _LOCK:
        if type(np) is _LazyNumpy and loaded() is None:
            _AFTER_LOAD.append(fn)
            return
    fn()


def load() -> None:
    """Import numpy (if needed) and turn ``np`` into a plain module with its namespace."""
    with _LOCK:
        if type(np) is not _LazyNumpy:
            return
        import numpy

        for name in PRELOAD:
            importlib.import_module(name)
        np.__dict__.update(numpy.__dict__)
        np.__class__ = types.ModuleType
        hooks = list(_AFTER_LOAD)
        _AFTER_LOAD.clear()
    for fn in hooks:
        fn()


async def ready() -> None:
    """Make numpy usable without importing it on the event loop: the import (and the
    stand-in's switch) run in a worker thread; the loop keeps serving meanwhile."""
    if type(np) is not _LazyNumpy:
        return
    start = time.perf_counter()
    await asyncio.to_thread(load)
    log.info("numpy loaded off the event loop in %.0f ms", (time.perf_counter() - start) * 1e3)


def loaded() -> types.ModuleType | None:
    """numpy if it has been imported completely, else None (and nothing is imported)."""
    module = sys.modules.get("numpy")
    if module is None:
        return None
    # importlib marks a module's spec as initialising while its body still runs in some
    # thread; such a module is in sys.modules but lacks most of its names.
    if getattr(getattr(module, "__spec__", None), "_initializing", False):
        return None
    return module

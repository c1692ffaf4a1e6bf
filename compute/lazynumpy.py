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
an ndarray.
"""

from __future__ import annotations

import sys
import threading
import types
from typing import Any

_LOCK = threading.Lock()   # two threads touching np first: one import, one namespace copy


class _LazyNumpy(types.ModuleType):
    """Stands for numpy until an attribute is read; then becomes a copy of its namespace."""

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not yet in this module's dict, i.e. before the first load
        # (afterwards the class is plain ModuleType and numpy's own module __getattr__,
        # copied with the namespace, serves its lazily imported submodules).
        with _LOCK:
            if type(self) is _LazyNumpy:
                import numpy

                self.__dict__.update(numpy.__dict__)
                self.__class__ = types.ModuleType
        return getattr(self, name)


np: Any = _LazyNumpy("numpy")


def loaded() -> types.ModuleType | None:
    """numpy if some code imported it already, else None (and nothing is imported)."""
    return sys.modules.get("numpy")

"""Opening a big message's records off the event loop.

Why: a received message's buffer is fresh memory, and its pages materialise as the
frames are written into it. The kernel zeroes every page on that first touch, and the
thread that touches it pays: a profile of a peer receiving a 500 MB share in
tests/test_loop_lag.py's 1 GiB job had 78 % of its event-loop thread's CPU in the
kernel's ``clear_page_erms`` under the AES-GCM decryption, 6 % in the decryption itself;
the loop spent 85-200 ms of CPU between two 20 ms lag ticks. Opened on a thread of their
own, those faults cost the loop nothing; the reader awaits the opening before it reads
the next frame, so frames are still opened one at a time, in order.

Small messages are opened on the loop as before: their buffers come from the heap,
already touched, and a thread hop would only add latency to a request. The thread is one
per process, made on the first big message (an idle daemon never has one), and shared by
every link: decryption runs at GB/s, far above what the links bring in.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

from protocol.framing import LARGE_MESSAGE, SealedFill

#: Frames of messages larger than this are opened on the opener thread (see above).
OFF_LOOP_MESSAGE = LARGE_MESSAGE

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def opens_off_loop(fill: SealedFill) -> bool:
    """Whether this frame is written into its message on the opener thread."""
    return fill.message_size > OFF_LOOP_MESSAGE


def _opener() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sedma-open")
        return _pool


async def open_records(fill: SealedFill) -> None:
    """Open ``fill``'s records: on the opener thread for a big message, else right here.

    The caller owns the link's receive cipher and waits here, so the thread is its only
    user meanwhile. If the caller is cancelled (the link closing), the opening already
    started still finishes on the thread, into a buffer nobody will read.

    cryptography releases the GIL while it decrypts (checked with 48 and 50), so the loop
    runs beside the thread; with a version that did not, it would still get the GIL
    between two records (64 KiB each) at the interpreter's switch interval.
    """
    if not opens_off_loop(fill):
        fill.open()
        return
    await asyncio.wrap_future(_opener().submit(fill.open))

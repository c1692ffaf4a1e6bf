"""Carries prefetch decisions out: after each read, load the predicted chain ahead.

The decisions are :mod:`node.memory.prefetch`'s pure functions (the chain from the
learned successor model, how deep the RAM budget allows, which loads to start); this only
takes the store's snapshot, publishes the chain's ranks to the store (so eviction keeps
the blocks needed soonest) and runs the loads on a small bounded pool of threads, off the
event loop and off the compute threads. Several loads in flight keep the device busy while
the layers before them compute.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging

from node.memory.dualmemory import DualMemory
from node.memory.prefetch import Key, PrefetchPlan, follow_chain, plan_prefetch
from node.memory.store import BlockStore

log = logging.getLogger("sedma.prefetch")

#: Block loads in flight at once (each spreads its chunks over the store's reader threads).
THREADS = 3


class Prefetcher:
    """Loads predicted blocks ahead of their reads; call :meth:`after` on the event loop."""

    def __init__(self, store: BlockStore, memory: DualMemory | None, enabled: bool = True,
                 threads: int = THREADS) -> None:
        self.store = store
        self.memory = memory
        self.enabled = enabled and memory is not None
        self.threads = max(1, threads)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self.threads, thread_name_prefix="sedma-prefetch")
        self._in_flight: set[Key] = set()     # owned by the event loop

    def after(self, name: str, index: int) -> PrefetchPlan | None:
        """``name/index`` is about to be read: start loading what is predicted after it."""
        if not self.enabled:
            return None
        held = {(m, i) for m, idxs in self.store.names().items() for i in idxs}
        chain = follow_chain((name, index), self._successor, held.__contains__)
        blocks, other_pinned = self.store.chain_state(chain, self._in_flight)
        plan = plan_prefetch(blocks, self.store.budget, other_pinned, self.threads)
        # The block about to be read is rank 0 even when it alone overflows the budget:
        # until its read pins it, a prefetch must not evict it.
        self.store.set_prediction(plan.ranks | {(name, index): 0}, plan.depth)
        loop = asyncio.get_running_loop()
        for key in plan.start:
            if key in self._in_flight:
                continue
            self._in_flight.add(key)
            fut = loop.run_in_executor(self._pool, self.store.prefetch, *key)
            fut.add_done_callback(lambda f, key=key: self._done(key, f))
        return plan

    def _successor(self, key: Key) -> Key | None:
        guesses = self.memory.predict_next(key, limit=1) if self.memory is not None else []
        return guesses[0] if guesses else None

    def _done(self, key: Key, fut: asyncio.Future) -> None:
        self._in_flight.discard(key)
        if not fut.cancelled() and fut.exception() is not None:
            log.warning("prefetch of %s/%d failed: %s", *key, fut.exception())

    def close(self) -> None:
        """Stop taking loads; those running finish (they only read files)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

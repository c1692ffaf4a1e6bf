"""The B operands a peer holds for chunked one-shot shares (``MatmulOperand`` then its
``MatmulRows`` chunks).

Why hold anything: a chunked share sends B once and then A's rows in chunks, each
computed as it arrives, so the peer's compute overlaps the transfer of the next chunk
(bench/README.md, oneshot4). Every chunk needs all of B, so B must outlive the message
that carried it. What a peer can make this node hold is bounded: a count of operands and
their bytes (over either the operand is refused, the asker fails the share over), and
each is dropped after the number of chunks its sender announced or, unused, after
``hold_s`` seconds (a sender that died or gave up). Keys carry the sender's node id: one
peer cannot use or drop another's operand.

Owned by the event loop (no lock): entries are opened, counted and dropped there; the
compute threads only read the arrays.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from node.memory.store import StoreError
from node.runtime.outcomes import ignore_outcome

MAX_HELD = 16                 # operands held at once, all peers together
MAX_HELD_BYTES = 1 << 30      # their bytes: one 1 GiB job's B at most
HOLD_S = 30.0                 # an operand unused this long is dropped (chunks come ~1 MiB apart)
MAX_PER_SENDER = 4            # operands one peer may have held at once
MAX_CHUNKS = 1024             # chunks one operand may announce


@dataclass
class Held:
    """One held B: ``ready`` resolves to the validated array (or the validation error)."""

    ready: asyncio.Future
    device: str | None
    seed: int
    nbytes: int
    left: int                              # chunks still to be served
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class HeldOperands:
    """Held B operands by (sender, job id), with their limits and expiry."""

    def __init__(self, max_held: int = MAX_HELD, max_bytes: int = MAX_HELD_BYTES,
                 hold_s: float = HOLD_S, max_per_sender: int = MAX_PER_SENDER) -> None:
        self.max_held, self.max_bytes, self.hold_s = max_held, max_bytes, hold_s
        self.max_per_sender = max_per_sender
        self._held: dict[tuple[str, str], Held] = {}

    @property
    def nbytes(self) -> int:
        return sum(h.nbytes for h in self._held.values())

    def __len__(self) -> int:
        return len(self._held)

    def open(self, sender: str, job_id: str, nbytes: int, chunks: Any, device: str | None,
             seed: int) -> Held:
        """Start holding an operand of ``nbytes`` for ``chunks`` chunks; a clear
        StoreError when it breaks a limit or the key is already held. Synchronous, so an
        operand is known before the chunks that follow it on the link are served."""
        key = (sender, job_id)
        if not isinstance(chunks, int) or isinstance(chunks, bool) or not 1 <= chunks <= MAX_CHUNKS:
            raise StoreError(f"a held operand needs 1 to {MAX_CHUNKS} chunks, got {chunks!r}")
        if key in self._held:
            raise StoreError(f"an operand for job {job_id} is already held")
        if sum(1 for s, _ in self._held if s == sender) >= self.max_per_sender:
            raise StoreError(f"node busy: {self.max_per_sender} of your operands held already")
        if len(self._held) >= self.max_held:
            raise StoreError(f"node busy: {len(self._held)} operands held (limit {self.max_held})")
        if self.nbytes + nbytes > self.max_bytes:
            raise StoreError(f"node busy: holding {self.nbytes} bytes of operands, "
                             f"{nbytes} more would pass the {self.max_bytes}-byte limit")
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        ready.add_done_callback(ignore_outcome)
        held = Held(ready, device, seed, nbytes, chunks)
        self._held[key] = held
        self._touch(key, held)
        return held

    def refused(self, sender: str, job_id: str) -> None:
        """The operand failed validation: its chunks will be refused with that error, and
        its bytes no longer count against the limit (none are kept)."""
        held = self._held.get((sender, job_id))
        if held is not None:
            held.nbytes = 0

    def get(self, sender: str, job_id: str) -> Held:
        """The operand a chunk of ``job_id`` from ``sender`` needs (StoreError if none)."""
        held = self._held.get((sender, job_id))
        if held is None:
            raise StoreError(f"no operand held for job {job_id}: never sent, "
                             "already used by its announced chunks, or expired")
        self._touch((sender, job_id), held)
        return held

    def served(self, sender: str, job_id: str) -> None:
        """One chunk of the operand is done (computed or failed): drop it after the last."""
        held = self._held.get((sender, job_id))
        if held is None:
            return
        held.left -= 1
        if held.left <= 0:
            self.drop(sender, job_id)
        else:
            self._touch((sender, job_id), held)

    def drop(self, sender: str, job_id: str) -> None:
        held = self._held.pop((sender, job_id), None)
        if held is not None and held.timer is not None:
            held.timer.cancel()

    def _touch(self, key: tuple[str, str], held: Held) -> None:
        """Expire ``hold_s`` after the operand was last used, not after it arrived: a
        share's chunks on a slow link may take longer than ``hold_s`` in all."""
        if held.timer is not None:
            held.timer.cancel()
        held.timer = asyncio.get_running_loop().call_later(self.hold_s, self._expire, key, held)

    def _expire(self, key: tuple[str, str], held: Held) -> None:
        if self._held.get(key) is held:
            del self._held[key]
            if not held.ready.done():
                held.ready.set_exception(StoreError("the held operand expired"))


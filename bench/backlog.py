"""A storm of direct dials at a listener whose loop is busy: what the accept backlog changes.

When N daemons start at once on one machine, each one's listener receives up to N-1
dials while its event loop is busy with its own start. The kernel completes connections
into the listener's accept queue without the loop; once the queue holds ``backlog``
connections it drops further SYNs, and the dialler's kernel retries them 1 s, then 3 s
later -- past the connector's 3 s ``tcp_timeout`` a dial has failed (and used to fall
back to ICE, loading aiortc). This script plays it on loopback with plain sockets: a
listener that accepts nothing for ``--busy`` seconds, then accepts everything, and
``--dials`` non-blocking connects started at once, each given ``--timeout`` seconds.

Run by hand:  python bench/backlog.py [--dials 99,150,300] [--busy 0.5,2.5] [--timeout 3]
Prints one row per (backlog, dials, busy): connected within the timeout, and the median
and slowest connect time.
"""

from __future__ import annotations

import argparse
import select
import socket
import statistics
import threading
import time


def storm(backlog: int, dials: int, busy: float, timeout: float) -> tuple[int, float, float]:
    """(connected, median s, slowest s) of ``dials`` connects at a listener that is busy
    for ``busy`` seconds."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(backlog)
    port = listener.getsockname()[1]
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def serve() -> None:
        if stop.wait(busy):                    # the loop is busy: nothing is accepted
            return
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    socks, started, done = [], {}, {}
    poll = select.poll()
    for _ in range(dials):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
        started[s.fileno()] = time.monotonic()
        poll.register(s, select.POLLOUT)
    deadline = time.monotonic() + timeout
    while len(done) < dials and time.monotonic() < deadline:
        for fd, _ in poll.poll(20):
            if fd not in done:
                done[fd] = time.monotonic() - started[fd]
                poll.unregister(fd)
    ok = [done[s.fileno()] for s in socks if s.fileno() in done
          and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0]
    stop.set()
    server.join(5)
    for s in [*socks, *accepted, listener]:
        s.close()
    return len(ok), statistics.median(ok) if ok else float("nan"), max(ok, default=float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dials", default="99,150,300")
    ap.add_argument("--busy", default="0.5,2.5")
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--backlogs", default="100,1024", help="100: asyncio's default")
    args = ap.parse_args()
    print("| backlog | dials | listener busy s | connected within "
          f"{args.timeout:g} s | median s | slowest s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for busy in (float(b) for b in args.busy.split(",")):
        for dials in (int(d) for d in args.dials.split(",")):
            for backlog in (int(b) for b in args.backlogs.split(",")):
                ok, med, worst = storm(backlog, dials, busy, args.timeout)
                print(f"| {backlog} | {dials} | {busy:g} | {ok} | {med:.2f} | {worst:.2f} |")


if __name__ == "__main__":
    main()

"""What a sleep costs a waiting relay: loopback TCP round trips to an echoing process, the waiting side
either blocked in recv (it sleeps and is woken) or polling a non-blocking socket (it never sleeps).

The figure behind [relay] busy_poll_us (proxy.relay.busypoll): on a virtual machine the wake-up is an
interrupt from one virtual CPU to another, and can cost more than the answer takes to come.

    python bench/wakeup.py [--count N] [--repeat R]
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import time


def echo(listener: socket.socket) -> None:
    """The peer: answers every message at once, blocking (it sleeps between messages, as clients do)."""
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := conn.recv(256):
        conn.sendall(data)
    os._exit(0)


def round_trips(count: int, poll: bool) -> float:
    """Microseconds per round trip of a 20-byte message."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    if os.fork() == 0:
        echo(listener)
    sock = socket.create_connection(listener.getsockname())
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.close()
    sock.setblocking(not poll)
    message = b"x" * 20
    started = time.perf_counter()
    for _ in range(count):
        if poll:
            _send_polling(sock, message)
        else:
            sock.sendall(message)
        got = 0
        while got < len(message):
            try:
                got += len(sock.recv(256))
            except BlockingIOError:
                continue  # polling: ask again at once
    elapsed = time.perf_counter() - started
    sock.close()
    os.wait()
    return 1e6 * elapsed / count


def _send_polling(sock: socket.socket, data: bytes) -> None:
    while data:
        try:
            data = data[sock.send(data):]
        except BlockingIOError:
            continue


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=20000, help="round trips per measurement")
    ap.add_argument("--repeat", type=int, default=3, help="measurements of each kind, interleaved; the median is shown")
    args = ap.parse_args()
    sleeping, polling = [], []
    for _ in range(args.repeat):
        sleeping.append(round_trips(args.count, poll=False))
        polling.append(round_trips(args.count, poll=True))
    slept, polled = statistics.median(sleeping), statistics.median(polling)
    print(f"{os.cpu_count()} CPUs, {args.count} round trips x {args.repeat}")
    print(f"the waiting side sleeps:  {slept:6.1f} us per round trip")
    print(f"the waiting side polls:   {polled:6.1f} us per round trip")
    print(f"sleeping / polling:       {slept / polled:6.2f}")


if __name__ == "__main__":
    main()

"""Busy polling: while an answer is due, the event loop polls for a moment instead of going to sleep.

A relay spends its life waiting for short answers: its client's next command after each reply, its
upstream's reply after each command. On one host or a local network they come within tens of
microseconds, and the sleep in between costs more than the wait: epoll_wait, a context switch and, on
a virtual machine, an interrupt from one virtual CPU to the other to wake it. On the 2-vCPU machine of
bench/relay.py a loopback round trip takes 52 to 67 us when the waiting side sleeps and 20 to 25 us when
it polls (bench/wakeup.py).

So after a write that expects an answer the loop keeps turning without sleeping (a callback that puts
itself back with call_soon: each turn asks epoll with a zero timeout) for up to a window. Each kind of
peer has a window of its own that follows how long its answers take, as Linux's haltpoll governor does
for an idle CPU (Window). An upstream far away (SES: milliseconds) costs a few polls in vain and then
none; a client on the same host keeps its window. Nothing polls while `yields()` says so (the service:
while more than one session is open, the loop has other work, and on a small machine a polling loop
takes CPU from the very processes whose answers it waits for; and while the store's writer thread has
a batch: a polling loop takes the GIL straight back after each zero-timeout epoll, and that thread
would wait for the interpreter's switch interval, 5 ms, instead of the loop's next sleep).

Linux's own busy polling (SO_BUSY_POLL) serves network cards' queues, never loopback: hence this.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

CLIENT = "client"
UPSTREAM = "upstream"


@dataclass(slots=True)
class Window:
    """How long to poll for one kind of peer's answer. Pure: it is told how long each answer took.

    An answer within the window leaves it as it is; one after it but within `most` means a longer window
    would have caught it: doubled (from most/8 when it was shut); one later than `most` means polling
    is wasted on this peer: halved, shut below most/8."""

    most: float  # seconds: [relay] busy_poll_us
    size: float | None = None  # seconds; open at first (`most`)

    def __post_init__(self) -> None:
        if self.size is None:
            self.size = self.most

    def observe(self, wait: float) -> None:
        if wait <= self.size:
            return
        floor = self.most / 8
        if wait <= self.most:
            self.size = min(self.most, max(2 * self.size, floor))
        else:
            half = self.size / 2
            self.size = half if half >= floor else 0.0


class BusyPoll:
    """The relay's poller, one per event loop: `expect(kind)` after a write whose answer is due (it
    returns when, for `answered`), `answered(kind, since)` once the answer is in."""

    def __init__(self, most_us: float, clock=time.monotonic, yields: Callable[[], bool] | None = None):
        most = most_us / 1e6
        self.windows = {CLIENT: Window(most), UPSTREAM: Window(most)}
        self._clock = clock
        self.yields = yields  # True while another of our threads has work that needs the GIL
        self._until = 0.0
        self._polling = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def expect(self, kind: str) -> float:
        now = self._clock()
        size = self.windows[kind].size
        if size:
            if now + size > self._until:
                self._until = now + size
            if not self._polling and not (self.yields is not None and self.yields()):
                self._polling = True
                self._loop = asyncio.get_running_loop()
                self._loop.call_soon(self._poll)
        return now

    @property
    def polling(self) -> bool:
        return self._polling

    def answered(self, kind: str, since: float) -> None:
        self.windows[kind].observe(self._clock() - since)

    def _poll(self) -> None:
        """One turn of polling: the loop's next turn waits for nothing while this is scheduled."""
        if self._clock() < self._until and not (self.yields is not None and self.yields()):
            self._loop.call_soon(self._poll)
        else:
            self._polling = False

"""Busy polling (proxy.relay.busypoll): the window's rule, the poller's turns, and a real relay whose slow
upstream stops being polled while its quick client still is."""
from __future__ import annotations

import asyncio

import aiosmtplib
import pytest

from proxy.app import Service
from proxy.relay.busypoll import CLIENT, UPSTREAM, BusyPoll, Window
from tests.conftest import ScriptedUpstream, make_config, start_upstream, until
from tests.test_metrics import scrape

US = 1e-6


# -- the window: pure ---------------------------------------------------------------------------
def test_an_answer_within_the_window_leaves_it_open():
    w = Window(100 * US)
    assert w.size == pytest.approx(100 * US)
    w.observe(40 * US)
    w.observe(100 * US)
    assert w.size == pytest.approx(100 * US)


def test_answers_later_than_the_most_halve_the_window_then_shut_it():
    w = Window(100 * US)
    sizes = []
    for _ in range(4):
        w.observe(5000 * US)  # an upstream milliseconds away
        sizes.append(round(w.size / US, 2))
    assert sizes == [50.0, 25.0, 12.5, 0.0]  # below most/8 it is shut
    w.observe(5000 * US)
    assert w.size == 0.0


def test_a_shut_window_reopens_when_answers_come_within_the_most_and_grows_to_it():
    w = Window(100 * US, size=0.0)
    w.observe(30 * US)  # polling this long would have caught it
    assert w.size == pytest.approx(12.5 * US)
    w.observe(30 * US)
    assert w.size == pytest.approx(25.0 * US)
    w.observe(30 * US)
    assert w.size == pytest.approx(50.0 * US)
    w.observe(30 * US)  # within: left as it is
    assert w.size == pytest.approx(50.0 * US)
    w.observe(90 * US)
    assert w.size == pytest.approx(100 * US)
    w.observe(99 * US)
    assert w.size == pytest.approx(100 * US)  # never beyond the most


# -- the poller: turns of a real event loop, a clock the test moves ------------------------------
async def test_the_loop_polls_until_the_window_after_the_last_expectation_has_passed():
    now = [1000.0]
    poll = BusyPoll(100, clock=lambda: now[0])
    turns = 0
    assert not poll.polling
    since = poll.expect(CLIENT)
    assert since == 1000.0 and poll.polling
    for _ in range(5):
        await asyncio.sleep(0)  # the loop turns without sleeping: the poller is scheduled
        turns += 1
    assert poll.polling
    now[0] += 60 * US
    poll.expect(UPSTREAM)  # a later expectation moves the end
    now[0] += 60 * US  # past the first one's window, within the second's
    await asyncio.sleep(0)
    assert poll.polling
    now[0] += 50 * US
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not poll.polling and turns == 5
    poll.answered(CLIENT, since)  # 170 us: later than the most
    assert poll.windows[CLIENT].size == pytest.approx(50 * US) and poll.windows[UPSTREAM].size == pytest.approx(100 * US)


async def test_a_shut_window_never_polls():
    now = [5.0]
    poll = BusyPoll(100, clock=lambda: now[0])
    poll.windows[UPSTREAM].size = 0.0
    poll.expect(UPSTREAM)
    assert not poll.polling
    poll.expect(CLIENT)
    assert poll.polling


async def test_polling_yields_while_the_store_writer_has_work(tmp_path):
    """The store's writer thread needs the GIL between its statements: the loop sleeps (and lets it) rather
    than poll while `writing()` says it has a batch, and polls again once it has none."""
    from proxy.store import store_for_url

    store = await store_for_url(f"sqlite://{tmp_path / 'y.db'}").open()
    try:
        now = [1.0]
        poll = BusyPoll(100, clock=lambda: now[0], yields=store.writing)
        assert not store.writing()
        poll.expect(CLIENT)
        assert poll.polling
        store._queue.append(object())  # as _write queues a unit for the writer thread
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert store.writing() and not poll.polling  # stopped within its window
        poll.expect(UPSTREAM)
        assert not poll.polling
        store._queue.clear()
        poll.expect(UPSTREAM)
        assert poll.polling
    finally:
        await store.close()


# -- a real relay --------------------------------------------------------------------------------
class SlowUpstream(ScriptedUpstream):
    """Answers MAIL, RCPT and the end of data after `delay` seconds, as an upstream far away does."""

    def __init__(self, delay: float):
        super().__init__()
        self.delay = delay

    async def handle_MAIL(self, *args):
        await asyncio.sleep(self.delay)
        return await super().handle_MAIL(*args)

    async def handle_RCPT(self, *args):
        await asyncio.sleep(self.delay)
        return await super().handle_RCPT(*args)

    async def handle_DATA(self, *args):
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(*args)


async def _send(port: int, count: int) -> None:
    message = b"From: a@shop.example\r\nTo: b@x.example\r\nSubject: hi\r\n\r\nhello\r\n"
    for _ in range(count):
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as client:
            await client.sendmail("a@shop.example", ["b@x.example"], message)


async def test_a_slow_upstream_stops_being_polled_while_the_quick_client_still_is(tmp_path):
    """The upstream answers after 30 ms, beyond the 5 ms most: its window shuts within a few replies and
    stays shut; the client, in this very process, answers within it: its window stays open."""
    up = await start_upstream(SlowUpstream(0.03))
    try:
        config = make_config(tmp_path, up.port, relay={"busy_poll_us": 5000})
        async with Service(config) as svc:
            poll = svc.busy_poll
            assert poll is not None and poll.windows[UPSTREAM].size == 0.005
            await _send(svc.relay_address[1], 3)
            assert poll.windows[UPSTREAM].size == 0.0
            assert poll.windows[CLIENT].size == 0.005
            assert len(up.handler.messages) == 3
            metrics = await scrape(svc)  # what an operator sees of it
            assert 'bounceproxy_relay_busy_poll_window_seconds{side="upstream"} 0.0' in metrics
            assert 'bounceproxy_relay_busy_poll_window_seconds{side="client"} 0.005' in metrics
    finally:
        up.server.close()


async def test_the_relay_polls_for_one_session_alone(tmp_path, upstream):
    """With a second session open the loop has other work (and on a small machine polling would take CPU
    from the processes it waits for): the service's poller stands aside until one session is left."""
    config = make_config(tmp_path, upstream.port, relay={"busy_poll_us": 5000})
    async with Service(config) as svc:
        poll = svc.busy_poll
        host, port = svc.relay_address
        first = aiosmtplib.SMTP(hostname=host, port=port)
        await first.connect()
        await first.ehlo()
        assert not poll.yields()
        poll.expect(CLIENT)
        assert poll.polling
        second = aiosmtplib.SMTP(hostname=host, port=port)
        await second.connect()
        await second.ehlo()
        assert poll.yields()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not poll.polling  # stopped at its next turn
        poll.expect(CLIENT)
        assert not poll.polling
        await second.quit()

        async def one_left() -> bool:
            return not poll.yields()

        await until(one_left, timeout=5)
        await first.quit()


async def test_busy_poll_us_0_never_polls(tmp_path, upstream):
    config = make_config(tmp_path, upstream.port, relay={"busy_poll_us": 0})
    async with Service(config) as svc:
        assert svc.busy_poll is None and svc.upstream.busy_poll is None
        await _send(svc.relay_address[1], 1)
        assert len(upstream.handler.messages) == 1

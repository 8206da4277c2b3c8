"""Several bounceproxy processes on one PostgreSQL: two relays and one bounce MX drive the whole loop,
and what one instance writes (a suppression, a reputation pause) the others enforce within the
documented delay ([suppression] refresh_seconds: every instance polls the log that often)."""
from __future__ import annotations

import asyncio
import smtplib
import time


from proxy.model import Correlation, Kind, Source
from proxy.store import EventFilter, MessageFilter, store_for_url
from tests.conftest import ROOT, until
from tests.daemon import Daemon

DATA = ROOT / "tests" / "data"
KEY = "multi-instance-verp-key-0123456789"
REFRESH = 1.0  # [suppression] refresh_seconds, the documented delay


def config(upstream_port: int) -> str:
    return f"""
[upstream]
profile = "smtp"
host = "127.0.0.1"
port = {upstream_port}
tls = "none"
probe_interval = 0
[inbound]
bounce_domains = ["bounces.test"]
[suppression]
refresh_seconds = {REFRESH}
"""


def instance(tmp_path, name: str, upstream_port: int, url: str, inbound: bool, workers: int = 1) -> Daemon:
    home = tmp_path / name
    home.mkdir()
    return Daemon(home, config(upstream_port), api=False, env={
        "BOUNCEPROXY_STORE__BACKEND": "postgresql", "BOUNCEPROXY_STORE__URL": url, "BOUNCEPROXY_VERP_KEY": KEY,
        "BOUNCEPROXY_INBOUND__ENABLED": "true" if inbound else "false", "BOUNCEPROXY_RELAY__WORKERS": str(workers)})


def rcpt(daemon: Daemon, recipient: str, sender: str = "app@example.com") -> tuple[int, str]:
    """MAIL and one RCPT through a relay; the relay's answer to the RCPT (to MAIL, when MAIL is refused)."""
    with smtplib.SMTP("127.0.0.1", daemon.relay_port, timeout=30) as smtp:
        code, text = smtp.ehlo()[0], ""
        code, text = smtp.mail(sender)
        if code == 250:
            code, text = smtp.rcpt(recipient)
        smtp.rset()
    return code, text.decode()


def send(daemon: Daemon, recipient: str) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.relay_port, timeout=30) as smtp:
        try:
            smtp.sendmail("app@example.com", [recipient], b"From: app@example.com\r\nSubject: hi\r\n\r\nhello\r\n")
        except smtplib.SMTPRecipientsRefused:
            pass


async def test_two_relays_and_a_bounce_mx_share_one_log(tmp_path, upstream, pg_url):
    store = await store_for_url(pg_url).open()  # creates the tables before the instances race for them
    relay_a = instance(tmp_path, "relay-a", upstream.port, pg_url, inbound=False, workers=2)  # [relay] workers too
    relay_b = instance(tmp_path, "relay-b", upstream.port, pg_url, inbound=False)
    mx = instance(tmp_path, "mx", upstream.port, pg_url, inbound=True)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.gather(*(loop.run_in_executor(None, d.start) for d in (relay_a, relay_b, mx)))
        # 1. a synchronous bounce at relay A is in the shared log
        await loop.run_in_executor(None, send, relay_a, "unknown-1@example.net")
        [sync] = await until(lambda: store.list_events(EventFilter(recipient="unknown-1@example.net")))
        assert (sync.event.source, sync.event.bounce_type, sync.event.reason) == (Source.SYNC, "hard", "userunknown")

        # 2. a message relay A sent bounces later: the DSN reaches the bounce MX process
        await loop.run_in_executor(None, send, relay_a, "kijitora@neko.example.jp")
        [message] = await store.list_messages(MessageFilter(recipient="kijitora@neko.example.jp"))
        assert message.verp_token and message.verp_token.endswith("@bounces.test")
        code, _ = await loop.run_in_executor(None, rcpt, relay_b, "kijitora@neko.example.jp")
        assert code == 250  # not suppressed yet
        with smtplib.SMTP("127.0.0.1", mx.inbound_port, timeout=30) as smtp:
            smtp.sendmail("", [message.verp_token], (DATA / "lhost-postfix-06.eml").read_bytes())
        [late] = await until(lambda: store.list_events(EventFilter(recipient="kijitora@neko.example.jp",
                                                                   source="async")))
        assert (late.event.kind, late.event.correlation, late.event.relay_id) == (Kind.BOUNCE, Correlation.VERP,
                                                                                  message.id)
        suppression = await until(lambda: store.get_suppression("", "kijitora@neko.example.jp"))
        written = time.monotonic()

        # 3. relay B, another process, refuses the address within the documented delay
        def refused_by_b():
            while True:
                code, text = rcpt(relay_b, "Kijitora@neko.example.jp")
                if code == 550:
                    return time.monotonic(), text
                assert time.monotonic() - written < 10 * REFRESH, f"relay B still answers {code} {text}"
                time.sleep(0.02)
        at, text = await loop.run_in_executor(None, refused_by_b)
        delay = at - written
        print(f"suppression written by the bounce MX, enforced by relay B after {delay:.2f}s")
        assert text.startswith("5.1.1 <Kijitora@neko.example.jp>: address is on the suppression list")
        assert delay <= REFRESH + 1.0  # one poll period, plus a loaded machine's slack
        assert suppression.kind == "hard"

        # relay A's two worker processes each answer, each with its own connection pool
        for i in range(2, 8):
            await loop.run_in_executor(None, send, relay_a, f"unknown-{i}@example.net")
        for i in range(2, 8):
            [event] = await store.list_events(EventFilter(recipient=f"unknown-{i}@example.net"))
            assert event.event.reason == "userunknown"

        # 4. a reputation pause written elsewhere (here: the operator's store) stops both relays' sender
        await store.pause_identity("example.com", time.time(), "hard bounce rate 12.0% >= 10.0%")
        for relay in (relay_a, relay_b):
            code, text = await until(lambda: _paused(loop, relay), timeout=10 * REFRESH)
            assert code == 451 and "paused by bounceproxy's reputation guard" in text
        assert await store.resume_identity("example.com")
        await until(lambda: _sends(loop, relay_b), timeout=10 * REFRESH)
    finally:
        for d in (relay_a, relay_b, mx):
            d.stop()
        await store.close()


async def _paused(loop, relay) -> tuple[int, str] | None:
    code, text = await loop.run_in_executor(None, rcpt, relay, "someone@example.net")
    return (code, text) if code == 451 else None


async def _sends(loop, relay) -> bool:
    code, _ = await loop.run_in_executor(None, rcpt, relay, "someone@example.net")
    return code == 250

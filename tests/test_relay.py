"""The relay against a real (scripted) upstream: what the client hears, what the upstream gets,
and what the bounce log holds."""
from __future__ import annotations

import asyncio
import smtplib
import sqlite3  # only to hold SQLite's write lock (test_locked_database_...): the store's own failure mode
import ssl

import aiosmtplib
import pytest

from proxy.app import Service
from proxy.model import BounceEvent, MessageRecord
from proxy.store import EventFilter, MessageFilter, SuppressionFilter
from tests.conftest import ScriptedUpstream, make_config, start_upstream

# A real DKIM-signed message shape: signature header, folded headers, a body with a leading dot
# and trailing whitespace that any re-serialisation would disturb.
SIGNED = (
    b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=sel;\r\n"
    b"\th=from:to:subject:date:message-id; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
    b"\tb=dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZSBidXQgaXRzIGJ5dGVzIG11c3Qgc3Vydml2ZQ==\r\n"
    b"From: App <app@example.com>\r\n"
    b"To: user@example.net\r\n"
    b"Subject: =?utf-8?q?Caf=C3=A9?= receipt\r\n"
    b"Date: Tue, 24 Nov 2026 06:00:00 +0000\r\n"
    b"Message-ID: <receipt-42@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b".a line that starts with a dot\r\n"
    b"trailing spaces   \r\n"
    b"\r\n"
)
UNSIGNED = b"From: app@example.com\r\nTo: user@example.net\r\nSubject: no id\r\n\r\nHello\r\n"


async def messages(svc: Service, **flt) -> list[MessageRecord]:
    """The logged messages with their recipients, newest first, read through the Store."""
    return await svc.store.list_messages(MessageFilter(limit=10**6, **flt))


async def events(svc: Service, **flt) -> list[BounceEvent]:
    return [e.event for e in await svc.store.list_events(EventFilter(limit=10**6, **flt))]


async def svc_count(svc: Service, table: str) -> int:
    return await svc.store.count_rows(table)


async def client(svc: Service) -> aiosmtplib.SMTP:
    host, port = svc.relay_address
    smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=10)
    await smtp.connect()
    return smtp


async def test_message_goes_upstream_byte_for_byte_and_is_recorded(service_any, upstream):
    service = service_any
    smtp = await client(service)
    reply = await smtp.ehlo()
    assert "PIPELINING" in reply.message and "8BITMIME" in reply.message
    await smtp.sendmail("app@example.com", ["user@example.net"], SIGNED)
    await smtp.quit()
    sender, rcpts, content = upstream.handler.messages[-1]
    assert (sender, rcpts) == ("app@example.com", ["user@example.net"])
    assert content == SIGNED  # DKIM survives: not one byte changed
    (msg,) = await messages(service)
    assert msg.status == "sent" and msg.message_id == "receipt-42@example.com"
    assert msg.header_from == "App <app@example.com>" and msg.subject == "Café receipt"
    assert msg.upstream_id.startswith("0100018c") and msg.size == len(SIGNED)
    assert [(r.address, r.status) for r in msg.recipients] == [("user@example.net", "accepted")]
    assert await svc_count(service, "recipients") == 1
    assert await events(service) == [] and await svc_count(service, "events") == 0


async def test_message_id_is_prepended_when_missing(service_any, upstream):
    service = service_any
    smtp = await client(service)
    await smtp.sendmail("app@example.com", ["user@example.net"], UNSIGNED)
    await smtp.quit()
    content = upstream.handler.messages[-1][2]
    first, rest = content.split(b"\r\n", 1)
    assert first.startswith(b"Message-ID: <") and first.endswith(b"@relay.test>")
    assert rest == UNSIGNED
    (msg,) = await messages(service)
    assert first == f"Message-ID: <{msg.message_id}>".encode()


async def test_rcpt_refusal_is_relayed_verbatim_and_logged_as_sync_bounce(service_any, upstream):
    service = service_any
    smtp = await client(service)
    await smtp.ehlo()
    await smtp.mail("app@example.com")
    refused = await smtp.execute_command(b"RCPT", b"TO:<unknown.user@example.net>")
    assert refused.code == 550
    assert refused.message == ("5.1.1 <unknown.user@example.net>: Recipient address rejected: "
                               "User unknown in virtual mailbox table")
    assert (await smtp.rcpt("good@example.net"))[0] == 250
    assert (await smtp.data(UNSIGNED))[0] == 250
    await smtp.quit()
    (event,) = await events(service)
    assert event.source == "sync" and event.kind == "bounce"
    assert event.recipient == "unknown.user@example.net"
    assert (event.bounce_type, event.reason, event.status, event.smtp_code) == ("hard", "userunknown", "5.1.1", 550)
    assert event.status_source == "dsn"
    (msg,) = await messages(service)
    assert msg.status == "partial" and event.relay_id == msg.id
    statuses = {r.address: r.status for r in msg.recipients}
    assert statuses == {"unknown.user@example.net": "rejected", "good@example.net": "accepted"}
    assert [m[1] for m in upstream.handler.messages] == [["good@example.net"]]


async def test_refusal_after_data_concerns_every_accepted_recipient(service_any):
    service = service_any
    smtp = await client(service)
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await smtp.sendmail("app@example.com", ["contentfail@example.net", "other@example.net"], UNSIGNED)
    assert refused.value.code == 554 and refused.value.message.startswith("5.6.0 Message rejected")
    await smtp.quit()
    logged = sorted(await events(service), key=lambda e: e.recipient)
    assert [(e.recipient, e.status) for e in logged] == [("contentfail@example.net", "5.6.0"), ("other@example.net", "5.6.0")]
    assert all(e.bounce_type != "hard" for e in logged)  # a content refusal says nothing about the address
    (msg,) = await messages(service)
    assert msg.status == "rejected"


async def test_sender_side_refusal_never_marks_the_recipient_hard(service_any):
    service = service_any
    smtp = await client(service)
    await smtp.ehlo()
    await smtp.mail("app@example.com")
    reply = await smtp.execute_command(b"RCPT", b"TO:<blocked@example.net>")
    assert reply.code == 554
    await smtp.quit()
    (event,) = await events(service)
    assert event.bounce_type == "soft" and event.reason == "blocked"


@pytest.mark.parametrize("sender, code, failure", [
    ("throttled@example.com", 454, "throttled"),
    ("unverified@example.com", 554, "sender not verified"),
])
async def test_account_failures_are_send_failures_not_bounces(service_any, sender, code, failure):
    service = service_any
    smtp = await client(service)
    await smtp.ehlo()
    reply = await smtp.execute_command(b"MAIL", f"FROM:<{sender}>".encode())
    assert reply.code == code
    await smtp.quit()
    (msg,) = await messages(service)
    assert msg.status == "failed" and msg.send_failure.startswith(failure)
    assert await events(service) == [] and await svc_count(service, "events") == 0


async def test_greylisting_is_soft_and_deferred(service_any):
    service = service_any
    smtp = await client(service)
    await smtp.ehlo()
    await smtp.mail("app@example.com")
    assert (await smtp.execute_command(b"RCPT", b"TO:<greylist@example.net>")).code == 450
    await smtp.rset()
    await smtp.quit()
    (event,) = await events(service)
    assert event.bounce_type == "soft" and event.status.startswith("4.")
    (msg,) = await messages(service)
    assert [(r.address, r.status) for r in msg.recipients] == [("greylist@example.net", "deferred")]
    assert await svc_count(service, "recipients") == 1


@pytest.mark.parametrize("recipient, stage", [
    ("drop@example.net", "rcpt"), ("lostdata@example.net", "data"), ("closing@example.net", "rcpt"),
])
async def test_connection_lost_upstream_gives_451_and_nothing_reported_sent(service_any, recipient, stage):
    service = service_any
    smtp = await client(service)
    await smtp.ehlo()
    await smtp.mail("app@example.com")
    reply = await smtp.execute_command(b"RCPT", f"TO:<{recipient}>".encode())
    if stage == "data":
        assert reply.code == 250
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.data(UNSIGNED)
        reply = refused.value
    if recipient == "closing@example.net":
        assert reply.code == 421 and "closing transmission channel" in reply.message  # the upstream's word
        await asyncio.sleep(0.1)
        assert not smtp.is_connected  # and, as a 421 obliges, the relay closed the client's connection
    else:
        assert reply.code == 451 and reply.message.startswith("4.4.1 ")
        await smtp.quit()
    assert [m for m in await messages(service) if m.status in ("sent", "partial")] == []
    # and the relay keeps serving: the next message goes through on a fresh connection
    smtp = await client(service)
    await smtp.sendmail("app@example.com", ["fine@example.net"], UNSIGNED)
    await smtp.quit()
    assert await messages(service, status="sent")


async def test_stalled_upstream_times_out_with_451(tmp_path, upstream):
    config = make_config(tmp_path, upstream.port, upstream={"command_timeout": 0.5, "pool_size": 1})
    async with Service(config) as svc:
        smtp = await client(svc)
        await smtp.sendmail("app@example.com", ["fine@example.net"], UNSIGNED)  # the connection, used once
        await asyncio.sleep(0.7)  # past the first exchanges' deadline: the connection's timer is off
        await smtp.mail("app@example.com")
        reply = await smtp.execute_command(b"RCPT", b"TO:<stall@example.net>")
        assert reply.code == 451 and "did not answer in time" in reply.message
        await smtp.quit()


async def test_unreachable_upstream_gives_451(tmp_path, store_url):
    probe = await start_upstream()
    port = probe.port
    probe.server.close()
    await probe.server.wait_closed()
    async with Service(make_config(tmp_path, port, store_url=store_url)) as svc:
        smtp = await client(svc)
        await smtp.ehlo()
        reply = await smtp.execute_command(b"MAIL", b"FROM:<app@example.com>")
        assert reply.code == 451 and reply.message.startswith("4.4.1 Upstream unavailable")
        await smtp.quit()
        (msg,) = await messages(svc)  # the refused attempt is on record (issue 10 §6)
        assert msg.status == "failed" and msg.upstream_reply.startswith("451 4.4.1 Upstream unavailable")


async def test_upstream_connections_are_pooled_across_client_connections(service, upstream):
    before = upstream.handler.connections
    for n in range(5):
        smtp = await client(service)
        await smtp.sendmail("app@example.com", [f"user{n}@example.net"], UNSIGNED)
        await smtp.quit()
    assert len(upstream.handler.messages) == 5
    assert upstream.handler.connections - before <= 1


async def test_several_transactions_on_one_connection_and_rset(service, upstream):
    smtp = await client(service)
    await smtp.ehlo()
    await smtp.mail("app@example.com")
    await smtp.rcpt("first@example.net")
    await smtp.rset()
    await smtp.sendmail("app@example.com", ["second@example.net"], UNSIGNED)
    await smtp.sendmail("app@example.com", ["third@example.net"], UNSIGNED)
    await smtp.quit()
    assert [m[1] for m in upstream.handler.messages] == [["second@example.net"], ["third@example.net"]]


async def test_committed_before_the_client_sees_250(service_any):
    """The 250 after DATA is sent only after the commit: another reader of the log sees the row at once."""
    from proxy.store import store_for_url

    service = service_any
    smtp = await client(service)
    await smtp.sendmail("app@example.com", ["user@example.net"], UNSIGNED)
    reader = await store_for_url(service.store.url).open(readonly=True)  # its own connection
    try:
        assert len(await reader.list_messages(MessageFilter(status="sent"))) == 1
    finally:
        await reader.close()
    await smtp.quit()


async def test_size_advertised_is_no_more_than_upstreams(tmp_path):
    up = await start_upstream(size=123456)
    async with Service(make_config(tmp_path, up.port)) as svc:
        smtp = await client(svc)
        reply = await smtp.ehlo()
        assert "SIZE 123456" in reply.message
        await smtp.quit()
    up.server.close()


async def test_starttls_and_auth_towards_upstream(tmp_path, ca, server_cert, ca_file, monkeypatch):
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(tls)
    handler = ScriptedUpstream()
    up = await start_upstream(handler, tls=tls, users={"AKIAEXAMPLE": "s3cret"})
    monkeypatch.setenv("BOUNCEPROXY_UPSTREAM_USERNAME", "AKIAEXAMPLE")
    monkeypatch.setenv("BOUNCEPROXY_UPSTREAM_PASSWORD", "s3cret")
    config = make_config(tmp_path, up.port, upstream={"host": "localhost", "tls": "starttls", "ca_file": ca_file})
    async with Service(config) as svc:
        smtp = await client(svc)
        await smtp.sendmail("app@example.com", ["user@example.net"], UNSIGNED)
        await smtp.quit()
    assert handler.auth_logins and handler.auth_logins[0] == "AKIAEXAMPLE"
    assert handler.messages[0][2].endswith(UNSIGNED)
    up.server.close()


async def test_wrong_upstream_credentials_are_a_send_failure(tmp_path, server_cert, ca_file, monkeypatch):
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(tls)
    up = await start_upstream(tls=tls, users={"AKIAEXAMPLE": "s3cret"})
    monkeypatch.setenv("BOUNCEPROXY_UPSTREAM_USERNAME", "AKIAEXAMPLE")
    monkeypatch.setenv("BOUNCEPROXY_UPSTREAM_PASSWORD", "wrong")
    config = make_config(tmp_path, up.port, upstream={"host": "localhost", "tls": "starttls", "ca_file": ca_file})
    async with Service(config) as svc:
        smtp = await client(svc)
        await smtp.ehlo()
        reply = await smtp.execute_command(b"MAIL", b"FROM:<app@example.com>")
        assert reply.code == 454 and "535" in reply.message
        await smtp.quit()
        (msg,) = await messages(svc)
        assert msg.status == "failed" and msg.send_failure.startswith("upstream authentication")
        assert await events(svc) == []
    up.server.close()


async def test_upstream_certificate_is_verified_by_default(tmp_path, server_cert):
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(tls)  # signed by the test CA, which the relay does not trust
    up = await start_upstream(tls=tls)
    config = make_config(tmp_path, up.port, upstream={"host": "localhost", "tls": "starttls"})
    async with Service(config) as svc:
        smtp = await client(svc)
        await smtp.ehlo()
        reply = await smtp.execute_command(b"MAIL", b"FROM:<app@example.com>")
        assert reply.code == 451 and "TLS" in reply.message
        await smtp.quit()
    up.server.close()


async def test_client_auth_and_starttls_when_configured(tmp_path, upstream, server_cert, monkeypatch):
    cert = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    monkeypatch.setenv("BOUNCEPROXY_RELAY_USERS", "app:pw1")
    config = make_config(tmp_path, upstream.port, relay={"require_auth": True, "tls_cert": str(cert), "tls_key": str(key)})
    async with Service(config) as svc:
        smtp = await client(svc)
        await smtp.ehlo()
        assert (await smtp.execute_command(b"MAIL", b"FROM:<app@example.com>")).code == 530
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        await smtp.starttls(tls_context=ctx)
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await smtp.login("app", "wrong")
        await smtp.login("app", "pw1")
        await smtp.sendmail("app@example.com", ["user@example.net"], UNSIGNED)
        await smtp.quit()
        (msg,) = await messages(svc)
        assert msg.client_user == "app"


async def test_refuses_to_listen_beyond_loopback_without_auth(tmp_path, upstream):
    from proxy.config import Address, ConfigError

    config = make_config(tmp_path, upstream.port, relay={"listen": Address("0.0.0.0", 0)})
    with pytest.raises(ConfigError, match="open relay"):
        async with Service(config):
            pass


async def test_allow_networks_lets_listed_clients_send_without_auth(tmp_path, upstream):
    from proxy.config import Address

    config = make_config(tmp_path, upstream.port, relay={"listen": Address("0.0.0.0", 0), "allow_networks": ("127.0.0.0/8",)})
    async with Service(config) as svc:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=svc.relay_address[1], start_tls=False)
        await smtp.connect()
        await smtp.sendmail("app@example.com", ["user@example.net"], UNSIGNED)
        await smtp.quit()
    config = make_config(tmp_path, upstream.port, relay={"listen": Address("0.0.0.0", 0), "allow_networks": ("10.0.0.0/8",)})
    async with Service(config) as svc:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=svc.relay_address[1], start_tls=False)
        await smtp.connect()
        await smtp.ehlo()
        assert (await smtp.execute_command(b"MAIL", b"FROM:<app@example.com>")).code == 530
        await smtp.quit()


def _smtplib_session(port: int) -> list[tuple[int, bytes]]:
    """A plain HELO client (no ESMTP), as old tools speak."""
    with smtplib.SMTP("127.0.0.1", port) as s:
        out = [s.helo("old.client")]
        out.append(s.mail("app@example.com"))
        out.append(s.rcpt("user@example.net"))
        out.append(s.data(UNSIGNED))
    return out


async def test_helo_client_with_smtplib(service, upstream):
    replies = await asyncio.to_thread(_smtplib_session, service.relay_address[1])
    assert [code for code, _ in replies] == [250, 250, 250, 250]
    assert upstream.handler.messages[-1][2].endswith(UNSIGNED)


async def test_simulator_answers_like_ses_mailbox_simulator(tmp_path, store_url):
    async with Service(make_config(tmp_path, store_url=store_url)) as svc:
        smtp = await client(svc)
        await smtp.ehlo()
        await smtp.mail("app@example.com")
        assert (await smtp.rcpt("success@simulator.amazonses.com"))[0] == 250
        bounce = await smtp.execute_command(b"RCPT", b"TO:<bounce@simulator.amazonses.com>")
        assert bounce.code == 550 and bounce.message.startswith("5.1.1")
        suppressed = await smtp.execute_command(b"RCPT", b"TO:<suppressionlist@simulator.amazonses.com>")
        assert suppressed.code == 550 and "suppressed" in suppressed.message
        assert (await smtp.rcpt("anyone@example.org"))[0] == 250
        code, text = await smtp.data(UNSIGNED)
        assert code == 250 and text.startswith("Ok ")
        await smtp.quit()
        (msg,) = await messages(svc)
        assert msg.status == "partial"
        kept = await svc.store.outbox_raw(msg.id)
        assert kept and kept.endswith(UNSIGNED)  # kept, not delivered
        reasons = {e.recipient: (e.reason, e.bounce_type) for e in await events(svc)}
        assert reasons["bounce@simulator.amazonses.com"] == ("userunknown", "hard")
        assert reasons["suppressionlist@simulator.amazonses.com"][0] == "suppressed"


async def test_locked_database_gives_451_430_then_recovers(tmp_path, upstream, caplog):
    config = make_config(tmp_path, upstream.port, store={"busy_timeout_ms": 200})
    async with Service(config) as svc:
        # SQLite's own failure mode, provoked: another process holds the write lock (nothing is read this way)
        blocker = sqlite3.connect(config.store.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            for n in range(3):
                smtp = await client(svc)
                with pytest.raises(aiosmtplib.SMTPDataError) as refused:
                    await smtp.sendmail("app@example.com", [f"user{n}@example.net"], UNSIGNED)
                assert refused.value.code == 451 and refused.value.message.startswith("4.3.0 ")
                await smtp.quit()
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        smtp = await client(svc)
        await smtp.sendmail("app@example.com", ["after@example.net"], UNSIGNED)  # recovers by itself
        await smtp.quit()
        assert [m.status for m in await messages(svc)] == ["sent"]
    failing = [r for r in caplog.records if "writes failing" in r.getMessage()]
    assert len(failing) == 1  # said once for the outage, not once per message
    assert any("writable again" in r.getMessage() for r in caplog.records)


async def test_no_sender_side_refusal_marks_a_recipient_hard(service_any, upstream):
    """Every sender-side reason, each with the real reply line of its classifier table, refused
    at RCPT through the relay: none may make the recipient a hard bounce."""
    from proxy.dsn.classify import PHRASES
    from proxy.model import SENDER_SIDE_REASONS

    service = service_any
    cases = {}
    for reason, table in PHRASES:
        if reason in SENDER_SIDE_REASONS:
            for n, (_rx, example) in enumerate(table):
                if example[:3].isdigit() and example[0] in "45":
                    cases[f"says-{reason}-{n}"] = f"{example[:3]} {example[4:]}"
    assert {k.split("-")[1] for k in cases} == set(SENDER_SIDE_REASONS)
    upstream.handler.rcpt_replies.update(cases)
    for local in cases:
        smtp = await client(service)
        await smtp.ehlo()
        await smtp.mail("app@example.com")
        reply = await smtp.execute_command(b"RCPT", f"TO:<{local}@example.net>".encode())
        assert reply.code == int(cases[local][:3])
        if smtp.is_connected:
            await smtp.quit()
    hard = [(e.recipient, e.reason) for e in await events(service, bounce_type="hard")]
    assert hard == []
    assert len(await events(service)) >= len(SENDER_SIDE_REASONS) - 3  # 421s are send failures
    assert await service.store.list_suppressions(SuppressionFilter(limit=None)) == []


async def test_upstream_that_refuses_tls_or_talks_garbage_gives_451_and_recovers(tmp_path):
    plain = await start_upstream()  # offers no STARTTLS while the relay requires it

    async def garbage(reader, writer):
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n\x00\xff\xfe not smtp\r\n")
        await writer.drain()
        writer.close()

    junk = await asyncio.start_server(garbage, "127.0.0.1", 0)
    try:
        for port, words in ((plain.port, "STARTTLS"), (junk.sockets[0].getsockname()[1], "upstream")):
            config = make_config(tmp_path, port, upstream={"tls": "starttls" if port == plain.port else "none"})
            async with Service(config) as svc:
                for _ in range(2):  # keeps answering, message after message
                    smtp = await client(svc)
                    await smtp.ehlo()
                    reply = await smtp.execute_command(b"MAIL", b"FROM:<app@example.com>")
                    assert reply.code == 451 and reply.message.startswith("4.4.1 ") and words in reply.message
                    await smtp.quit()
                # Each refused attempt is recorded (issue 10 §6), as failed, never as sent.
                attempts = [m for m in await messages(svc) if m.upstream_reply.startswith("451 4.4.1 ")]
                assert len(attempts) == 2 * (1 if port == plain.port else 2)
                assert {a.status for a in attempts} == {"failed"}
                assert all(a.send_failure.startswith("upstream unavailable") for a in attempts)
    finally:
        plain.server.close()
        junk.close()


SMTP_SOURCE = "/usr/sbin/smtp-source"


@pytest.mark.skipif(not __import__("os").path.exists(SMTP_SOURCE), reason="Postfix's smtp-source is not installed")
async def test_helo_only_mta_client_smtp_source(service, upstream):
    """Postfix's smtp-source speaks plain HELO (no ESMTP): 10 messages over 2 sessions."""
    proc = await asyncio.create_subprocess_exec(
        SMTP_SOURCE, "-s", "2", "-m", "10", "-l", "2048", "-f", "app@example.com", "-t", "user@example.net",
        f"127.0.0.1:{service.relay_address[1]}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    assert len(upstream.handler.messages) == 10
    assert all(m[1] == ["user@example.net"] for m in upstream.handler.messages)
    assert len(await messages(service, status="sent")) == 10


async def test_null_sender_passes_as_null_and_gets_no_return_path(tmp_path, upstream, monkeypatch):
    monkeypatch.setenv("BOUNCEPROXY_VERP_KEY", "k" * 32)
    async with Service(make_config(tmp_path, upstream.port)) as svc:
        smtp = await client(svc)
        await smtp.sendmail("", ["user@example.net"], UNSIGNED)
        await smtp.sendmail("app@example.com", ["user@example.net"], UNSIGNED)
        await smtp.quit()
    assert upstream.handler.mail_from[0] == "<>"  # as aiosmtpd spells the null sender
    assert upstream.handler.mail_from[1].startswith("bounce+")


def test_a_reply_longer_than_the_kept_lines_is_said_in_the_log(caplog):
    """The text of an upstream reply keeps its first _MAX_REPLY_LINES lines; the rest is counted and logged,
    never dropped silently, and the reply still counts as one."""
    import collections
    import logging

    from proxy.relay.upstream import _MAX_REPLY_LINES, ReplyAudit

    audit = ReplyAudit()
    audit.queue, audit.want = collections.deque(), 1
    lines = [b"250-line %d\r\n" % i for i in range(_MAX_REPLY_LINES + 19)] + [b"250 last\r\n"]
    with caplog.at_level(logging.WARNING, logger="proxy.relay.upstream"):
        audit.feed(b"".join(lines))
    [(code, mixed, text)] = audit.queue
    assert (code, mixed, audit.replies) == (250, False, 1)
    assert text.split("\n") == [f"line {i}" for i in range(_MAX_REPLY_LINES)]
    assert f"of {_MAX_REPLY_LINES + 20} lines: its text keeps the first {_MAX_REPLY_LINES}" in caplog.text

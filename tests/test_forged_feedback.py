"""Evidence identifies a message; it vouches only for that message's own recipients.

Anyone who received one message holds its VERP return path and can read its upstream id and
Message-ID in the headers. These tests forge reports with every kind of evidence (VERP with and
without a recipient index, the upstream id from each place a report carries it, the client's
Message-ID, the plain bounce address) naming addresses the message never went to, single and in
bulk, and check: nobody is suppressed, nothing counts against the sender, every address is kept as
`foreign_recipient`, the inbound row is flagged, and the genuine report still suppresses.
"""
from __future__ import annotations

import collections
import json
import subprocess
import sys

import aiohttp
import aiosmtplib
import pytest

from proxy.app import Service
from proxy.model import NEVER_ACTS, Correlation, MessageRecord
from proxy.store import InboundFilter, MessageFilter, SuppressionFilter
from tests.conftest import ROOT, make_config
from tests.test_inbound import KEY, deliver, events, relay_one

CUSTOMER = "real.customer@example.net"  # what the attacker wants suppressed: a good address we mail
BODY = b"From: app@example.com\r\nMessage-ID: <order-42@app.example.com>\r\nSubject: your order\r\n\r\nhi\r\n"


def dsn(recipients: list[str], *, message_id: str = "order-42@app.example.com", queue_id: str | None = None,
        status: str = "5.1.1", diagnostic: str = "550 5.1.1 <{r}>: Recipient address rejected: User unknown") -> bytes:
    """An RFC 3464 report naming `recipients`, quoting the original's headers, written from the RFC."""
    per_message = "Reporting-MTA: dns; mx.attacker.example\r\n"
    if queue_id:
        per_message += f"X-Postfix-Queue-ID: {queue_id}\r\n"
    blocks = "".join(
        f"\r\nFinal-Recipient: rfc822; {r}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {diagnostic.format(r=r)}\r\n" for r in recipients)
    return (
        "From: MAILER-DAEMON@mx.attacker.example\r\nTo: whoever@bounces.test\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you that your message could not be"
        " delivered.\r\n\r\n"
        f"--B\r\nContent-Type: message/delivery-status\r\n\r\n{per_message}{blocks}\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: app@example.com\r\nMessage-ID: <{message_id}>\r\nSubject: your order\r\n\r\n--B--\r\n"
    ).encode()


def arf(recipient: str, message_id: str = "order-42@app.example.com") -> bytes:
    """An RFC 5965 abuse report about `recipient`."""
    return (
        "From: feedback@isp.attacker.example\r\nTo: whoever@bounces.test\r\nSubject: abuse report\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary="F"\r\n\r\n'
        "--F\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\r\n"
        "--F\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: Forger/1.0\r\n"
        f"Version: 1\r\nOriginal-Rcpt-To: {recipient}\r\nOriginal-Mail-From: app@example.com\r\n\r\n"
        f"--F\r\nContent-Type: message/rfc822\r\n\r\nFrom: app@example.com\r\nTo: {recipient}\r\n"
        f"Message-ID: <{message_id}>\r\nSubject: your order\r\n\r\nhi\r\n\r\n--F--\r\n"
    ).encode()


@pytest.fixture
async def svc(tmp_path, upstream, monkeypatch, store_url):
    monkeypatch.setenv("BOUNCEPROXY_VERP_KEY", KEY)
    # Trust message_id too, and pause on a 5 % hard bounce rate: a forgery that got through would show.
    # On each backend in turn (SQLite, then PostgreSQL).
    config = make_config(tmp_path, upstream.port, store_url=store_url,
                         inbound={"plain_addresses": ("bounces@bounces.test",)},
                         suppression={"act_on_correlations": ("verp", "upstream_id", "message_id"),
                                      "pause_bounce_rate": 0.05, "rate_min_recipients": 1})
    async with Service(config) as service:
        yield service


async def suppressions(svc) -> list:
    return await svc.store.list_suppressions(SuppressionFilter(limit=None))


async def inbound_rows(svc) -> list:
    return await svc.store.list_inbound(InboundFilter(limit=10**6))


async def async_correlations(svc) -> dict[str, str]:
    return {e.recipient: e.correlation for e in await events(svc, source="async")}


async def sent_to_victim_and_customer(svc) -> tuple[MessageRecord, MessageRecord]:
    """The attacker receives one message (`attacker@`); the customer received another."""
    attacker_copy = await relay_one(svc, "attacker@evil.example", BODY)
    customer_copy = await relay_one(svc, CUSTOMER, BODY.replace(b"order-42", b"order-43"))
    return attacker_copy, customer_copy


async def assert_nobody_suppressed(svc, foreign: list[str]) -> None:
    assert await suppressions(svc) == [] and await svc.store.count_rows("suppressions") == 0
    assert await svc.store.paused_identities() == {} and await svc.store.count_rows("paused_identities") == 0
    recorded = await async_correlations(svc)
    for address in foreign:
        assert recorded[address] == "foreign_recipient"  # kept, never dropped, never acting


def evidence_cases(svc, message: MessageRecord) -> dict[str, tuple]:
    """(bounce address, report builder) for every kind of evidence the message can be named by."""
    upstream_id = message.upstream_id
    return {
        "verp": (message.verp_token, lambda rs: dsn(rs, message_id="unrelated@x.example")),
        "verp with recipient index": (svc.signer.address(message.id, 0),
                                      lambda rs: dsn(rs, message_id="unrelated@x.example")),
        "upstream id in the SES Message-ID": ("bounces@bounces.test",
                                              lambda rs: dsn(rs, message_id=f"{upstream_id}@email.amazonses.com")),
        "upstream id as X-Postfix-Queue-ID": ("bounces@bounces.test",
                                              lambda rs: dsn(rs, message_id="unrelated@x.example", queue_id=upstream_id)),
        "client Message-ID": ("bounces@bounces.test", lambda rs: dsn(rs)),
    }


@pytest.mark.parametrize("evidence", ["verp", "verp with recipient index", "upstream id in the SES Message-ID",
                                      "upstream id as X-Postfix-Queue-ID", "client Message-ID"])
async def test_each_kind_of_evidence_forged_for_a_foreign_address_suppresses_nobody(svc, evidence):
    message, _ = await sent_to_victim_and_customer(svc)
    assert message.upstream_id  # the scripted upstream answers `250 Ok <id>`, as SES does
    address, build = evidence_cases(svc, message)[evidence]
    await deliver(svc, build([CUSTOMER]), address)
    await assert_nobody_suppressed(svc, [CUSTOMER])
    (event,) = await events(svc, source="async")
    assert event.relay_id == message.id  # linked to the message whose evidence was abused
    (inbound,) = await inbound_rows(svc)
    assert inbound.foreign_recipients == 1
    assert CUSTOMER in inbound.flag and message.id in inbound.flag


@pytest.mark.parametrize("evidence", ["verp", "upstream id in the SES Message-ID", "client Message-ID"])
async def test_a_bulk_forgery_naming_a_thousand_addresses_suppresses_none_of_them(svc, evidence):
    message, _ = await sent_to_victim_and_customer(svc)
    victims = [CUSTOMER] + [f"customer{i}@example.org" for i in range(999)]
    address, build = evidence_cases(svc, message)[evidence]
    await deliver(svc, build(["attacker@evil.example", *victims]), address)
    # The attacker's own address is the message's own recipient: its bounce may act, on it alone.
    assert [r.address for r in await suppressions(svc)] == ["attacker@evil.example"]
    recorded = await async_correlations(svc)
    assert all(recorded[v] == "foreign_recipient" for v in victims)
    (identity,) = await svc.store.identity_stats(0, "example.com")
    assert identity.hard_bounces == 1  # the thousand strangers count nowhere against the sender
    by_correlation = collections.Counter(str(e.correlation) for e in await events(svc, source="async"))
    assert by_correlation == {"foreign_recipient": 1000, evidence_correlation(evidence): 1}
    (inbound,) = await inbound_rows(svc)
    assert inbound.foreign_recipients == 1000
    assert inbound.flag.startswith("names 1000 of 1001 addresses")


def evidence_correlation(evidence: str) -> str:
    return {"verp": "verp", "client Message-ID": "message_id"}.get(evidence, "upstream_id")


async def test_the_genuine_report_for_the_same_message_still_suppresses_its_real_recipient(svc):
    """The one address the message went to is suppressed by its real hard bounce, whatever else
    the same report names; the strangers beside it are not."""
    message = await relay_one(svc, CUSTOMER, BODY)
    await deliver(svc, dsn([CUSTOMER, "stranger@example.org"]), message.verp_token)
    (suppressed,) = await suppressions(svc)
    assert suppressed.address == CUSTOMER and suppressed.kind == "hard"
    by = await async_correlations(svc)
    assert by == {CUSTOMER: "verp", "stranger@example.org": "foreign_recipient"}


async def test_a_token_that_names_one_recipient_vouches_for_that_one_alone(svc, upstream):
    """A message to two recipients, and the token naming the first: a report through it naming
    the second (a real recipient of the message, but not the token's) does not act."""
    smtp = aiosmtplib.SMTP(hostname=svc.relay_address[0], port=svc.relay_address[1], start_tls=False)
    await smtp.connect()
    await smtp.sendmail("app@example.com", ["first@example.net", "second@example.net"], BODY)
    await smtp.quit()
    (message,) = await svc.store.list_messages(MessageFilter())
    await deliver(svc, dsn(["second@example.net"]), svc.signer.address(message.id, 0))
    assert await suppressions(svc) == []
    await deliver(svc, dsn(["first@example.net"], diagnostic="550 5.1.1 <{r}>: no such user here"),
                  svc.signer.address(message.id, 0))
    assert [r.address for r in await suppressions(svc)] == ["first@example.net"]


async def test_an_address_refused_at_rcpt_is_not_the_messages_own(svc):
    """The upstream never took the message for an address it refused: a late report for it is foreign."""
    smtp = aiosmtplib.SMTP(hostname=svc.relay_address[0], port=svc.relay_address[1], start_tls=False)
    await smtp.connect()
    await smtp.sendmail("app@example.com", ["ok@example.net", "greylist.me@example.net"], BODY)
    await smtp.quit()
    (message,) = await svc.store.list_messages(MessageFilter())
    await deliver(svc, dsn(["greylist.me@example.net"]), message.verp_token)
    (event,) = await events(svc, source="async")
    assert event.correlation == "foreign_recipient"


async def test_a_forged_complaint_about_an_address_the_message_never_went_to_suppresses_nobody(svc):
    message, _ = await sent_to_victim_and_customer(svc)
    await deliver(svc, arf(CUSTOMER), message.verp_token)
    await assert_nobody_suppressed(svc, [CUSTOMER])
    # The genuine complaint of the message's own recipient still suppresses it.
    await deliver(svc, arf("attacker@evil.example"), message.verp_token)
    (row,) = await suppressions(svc)
    assert (row.address, row.kind) == ("attacker@evil.example", "complaint")


async def test_foreign_recipients_are_visible_in_cli_api_and_metrics(svc, tmp_path):
    message, _ = await sent_to_victim_and_customer(svc)
    await deliver(svc, dsn([CUSTOMER, "other@example.org"]), message.verp_token)
    config = tmp_path / "cli.toml"
    store = svc.config.store
    where = (f'backend = "postgresql"\nurl = "{store.url}"' if store.backend == "postgresql" else f'path = "{store.path}"')
    config.write_text(f'[store]\n{where}\n[inbound]\nbounce_domains = ["bounces.test"]\n')

    def cli(*args) -> str:
        done = subprocess.run([sys.executable, "-m", "proxy", *args, "-c", str(config)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = [json.loads(line) for line in cli("bounces", "--correlation", "foreign_recipient", "--json").splitlines()]
    assert sorted(e["recipient"] for e in listed) == sorted([CUSTOMER, "other@example.org"])
    flagged = [json.loads(line) for line in cli("inbound", "--flagged", "--json").splitlines()]
    assert [f["foreign_recipients"] for f in flagged] == [2]
    stats = json.loads(cli("stats", "--json"))
    assert stats["foreign_recipients"] == 2 and stats["hard_bounces"] == 0  # not in any rate

    base = f"http://{svc.api_address[0]}:{svc.api_address[1]}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api/bounces?correlation=foreign_recipient") as response:
            assert len((await response.json())["events"]) == 2
        async with http.get(f"{base}/api/inbound?flagged=true") as response:
            assert [i["foreign_recipients"] for i in (await response.json())["inbound"]] == [2]
        async with http.get(f"{base}/metrics") as response:
            text = await response.text()
    assert 'bounceproxy_report_events_by_correlation{correlation="foreign_recipient"} 2' in text
    assert 'bounceproxy_inbound_flagged{flag="foreign_recipients"} 1' in text


def test_no_configuration_can_act_on_foreign_recipients(tmp_path):
    assert Correlation.FOREIGN_RECIPIENT in NEVER_ACTS
    config = tmp_path / "config.toml"
    config.write_text('[suppression]\nact_on_correlations = ["verp", "foreign_recipient"]\n')
    done = subprocess.run([sys.executable, "-m", "proxy", "check", "x@example.com", "-c", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "act_on_correlations" in done.stderr and str(config) in done.stderr and "Traceback" not in done.stderr

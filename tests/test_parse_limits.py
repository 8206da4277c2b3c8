"""Limits against mail bombs are stated and never silent: a report that reaches one says what was
cut, at N of M, on the Report, on the inbound row, in the CLI and in the metrics."""
from __future__ import annotations

import aiohttp
import pytest

from proxy.app import Service
from proxy.dsn import parse
from proxy.dsn.limits import DEFAULT_LIMITS, Limits
from tests.conftest import make_config
from tests.test_forged_feedback import dsn
from tests.test_inbound import KEY, deliver, events, inbound as inbound_rows


def qmail_notice(n: int) -> bytes:
    """qmail-send's failure notice (its documented wording), listing `n` addresses."""
    listed = "".join(f"<user{i}@example.org>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n\r\n" for i in range(n))
    return ("From: MAILER-DAEMON@mx.example\r\nTo: bounce@bounces.test\r\nSubject: failure notice\r\n\r\n"
            "Hi. This is the qmail-send program at mx.example.\r\nI'm afraid I wasn't able to deliver your message "
            "to the following addresses.\r\nThis is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
            f"{listed}--- Below this line is a copy of the message.\r\n\r\nSubject: x\r\n\r\nhi\r\n").encode()


def many_parts(n: int) -> bytes:
    blocks = "".join(f"--B\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n" for i in range(n))
    return ('From: MAILER-DAEMON@mx.example\r\nSubject: Undelivered\r\nMIME-Version: 1.0\r\n'
            f'Content-Type: multipart/mixed; boundary="B"\r\n\r\n{blocks}--B--\r\n').encode()


def test_a_large_report_is_read_whole_under_the_default_limits():
    """What used to be cut silently (3,197 of 5,000, 200 of 50,000) is read whole when within the limits."""
    report = parse(dsn([f"user{i}@example.org" for i in range(2500)]))
    assert len(report.recipients) == 2500 and report.truncated == []
    report = parse(qmail_notice(1500))
    assert len(report.recipients) == 1500 and report.truncated == []
    assert {r.reason for r in report.recipients} == {"userunknown"}


@pytest.mark.parametrize("raw, limits, kept, said", [
    (lambda: dsn([f"u{i}@example.org" for i in range(300)]), Limits(max_recipients=100), 100,
     "recipients: 100 of 300 kept"),
    (lambda: qmail_notice(400), Limits(max_text_chars=4096), None, "text: 4096 characters read of a body of"),
    (lambda: qmail_notice(300), Limits(max_lines=200), None, "lines: 200 of "),
    (lambda: qmail_notice(300), Limits(max_bytes=4000), None, "bytes: 4000 of "),
    (lambda: many_parts(50), Limits(max_parts=10), None, "parts: 10 of 51 read"),
])
def test_each_limit_reached_is_recorded_with_n_of_m(raw, limits, kept, said):
    report = parse(raw(), limits)
    assert any(t.startswith(said) for t in report.truncated), report.truncated
    if kept is not None:
        assert len(report.recipients) == kept
    assert parse(raw()).truncated == []  # the default limits read the same mail whole


def test_the_default_limits_are_the_documented_ones():
    from proxy.config import InboundConfig

    assert InboundConfig().parse_limits() == DEFAULT_LIMITS


async def test_the_bounce_mx_records_a_cut_on_the_inbound_row_and_shows_it(tmp_path, upstream, monkeypatch):
    monkeypatch.setenv("BOUNCEPROXY_VERP_KEY", KEY)
    config = make_config(tmp_path, upstream.port, inbound={"plain_addresses": ("bounces@bounces.test",),
                                                          "parse_max_recipients": 50})
    async with Service(config) as svc:
        await deliver(svc, dsn([f"u{i}@example.org" for i in range(120)]), "bounces@bounces.test")
        (inbound,) = await inbound_rows(svc)
        assert inbound.truncated == "recipients: 50 of 120 kept"
        assert len(await events(svc)) == 50
        assert len(inbound.raw) > 10_000  # the mail itself is kept whole: a reparse with higher limits reads it
        base = f"http://{svc.api_address[0]}:{svc.api_address[1]}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/api/inbound?flagged=true") as response:
                (listed,) = (await response.json())["inbound"]
            async with http.get(f"{base}/metrics") as response:
                metrics = await response.text()
        assert listed["truncated"] == "recipients: 50 of 120 kept"
        assert 'bounceproxy_inbound_flagged{flag="truncated"} 1' in metrics

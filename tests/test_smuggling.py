"""SMTP smuggling (SEC Consult 2023, CVE-2023-51764/5/6): data that another server could read as an
earlier end of data hides a second transaction inside the first. The relay refuses every
end-of-data look-alike, with NUL or other control bytes around the dot, and nothing reaches the
upstream: neither the carrier nor the smuggled message."""
from __future__ import annotations

import itertools

import pytest

from proxy.relay.server import smuggling_refusal
from tests.test_hardening import raw_session

SMUGGLED = b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nforged\r\n"
# Every way a line could end before the dot, and after it, but the one real <CRLF>.<CRLF>.
ENDINGS = [b"\r\n", b"\n", b"\r"]
AROUND = [b"", b"\x00", b"\x00\x00", b"\x0b", b"\x0c", b"\x1b", b"\x7f", b"\x01"]
LINES = {
    before + pre + b"." + post + after
    for before, after in itertools.product(ENDINGS, ENDINGS)
    for pre, post in itertools.product(AROUND, AROUND)
}
# A line that starts with the dot goes upstream dot-stuffed (`..<control>`): stripping controls leaves `..`,
# never an end of data. Those lines are content; every other look-alike is refused.
STUFFED = {b"\r\n." + post + b"\r\n" for post in AROUND if b"\x00" not in post}
LOOK_ALIKES = sorted(LINES - STUFFED)


@pytest.mark.parametrize("look_alike", LOOK_ALIKES, ids=repr)
def test_every_end_of_data_look_alike_is_refused(look_alike):
    content = b"Subject: a\r\n\r\nhello" + look_alike + SMUGGLED
    reply = smuggling_refusal(content)
    assert reply is not None and reply.startswith(("554 5.6.0 ", "554 5.6.11 ")), look_alike


@pytest.mark.parametrize("line", sorted(STUFFED - {b"\r\n.\r\n"}), ids=repr)
def test_a_line_starting_with_the_dot_is_content(line):
    assert smuggling_refusal(b"Subject: a\r\n\r\nhello" + line + b"bye\r\n") is None


@pytest.mark.parametrize("content", [
    b"Subject: fine\r\n\r\nline\r\n.\r\n..\r\nend\r\n",  # a line that is a dot (the client stuffed it)
    b"Subject: tabs\r\n\r\n\t.\r\n. \r\n",  # TAB and space are text, not controls
    b"Subject: =?iso-2022-jp?b?GyRCJUYlOSVIGyhC?=\r\n\r\n\x1b$B%F%9%H\x1b(B\r\n",  # ESC in ISO-2022-JP text
    b"Subject: ff\r\n\r\npage one\r\n\x0c\r\npage two\r\n",  # a form feed line
    b"",
])
def test_clean_data_is_not_refused(content):
    assert smuggling_refusal(content) is None


@pytest.mark.parametrize("look_alike", [
    b"\r\n\x00.\r\n", b"\r\n.\x00\r\n", b"\n\x00.\n", b"\r\x00.\r", b"\r\n\x00.\x00\r\n",
    b"\r\n\x0b.\r\n", b"\r\n\x0c.\x0c\r\n", b"\r\n\x7f.\r\n", b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r\n.\r",
], ids=repr)
async def test_look_alike_over_the_wire_never_reaches_the_upstream(service, upstream, look_alike):
    out = await raw_session(service.relay_address[1], [
        b"EHLO attacker\r\n", b"MAIL FROM:<app@example.com>\r\n", b"RCPT TO:<user@example.net>\r\n", b"DATA\r\n",
        b"Subject: a\r\n\r\nhello" + look_alike + SMUGGLED, b".\r\n", b"QUIT\r\n",
    ])
    assert b"\r\n554 5.6.0 " in out or b"\r\n554 5.6.11 " in out
    assert upstream.handler.messages == []  # neither the carrier nor the smuggled message
    assert "evil@example.com" not in upstream.handler.mail_from
    assert b"250 Ok 0100018c" not in out


async def test_nul_refusal_says_what_and_why(service, upstream):
    out = await raw_session(service.relay_address[1], [
        b"EHLO x\r\n", b"MAIL FROM:<app@example.com>\r\n", b"RCPT TO:<user@example.net>\r\n", b"DATA\r\n",
        b"Subject: a\r\n\r\nhello\r\n\x00.\r\n" + SMUGGLED, b".\r\n", b"QUIT\r\n",
    ])
    assert b"554 5.6.0 Message refused: a NUL byte in the message data" in out
    assert upstream.handler.messages == []


async def test_dot_line_with_a_control_goes_upstream_stuffed_and_exact(service, upstream):
    """`..<FF>` from the client is the line `.<FF>`: passed on, and dot-stuffed again upstream."""
    out = await raw_session(service.relay_address[1], [
        b"EHLO x\r\n", b"MAIL FROM:<app@example.com>\r\n", b"RCPT TO:<user@example.net>\r\n", b"DATA\r\n",
        b"Subject: a\r\nMessage-ID: <dot@example.com>\r\n\r\nhello\r\n..\x0c\r\nbye\r\n", b".\r\n", b"QUIT\r\n",
    ])
    assert b"250 Ok 0100018c" in out
    assert upstream.handler.messages[0][2] == b"Subject: a\r\nMessage-ID: <dot@example.com>\r\n\r\nhello\r\n.\x0c\r\nbye\r\n"


def test_the_shortcut_for_clean_data_agrees_with_the_rules_on_any_data():
    """smuggling_refusal recognises clean data in two passes; on every kind of data it must answer as the
    rules taken one by one (smuggling_found) do, and the long-line jump as a split into lines does."""
    import random

    from proxy.relay.server import smuggling_found, smuggling_refusal
    from proxy.smtp_guard import _has_long_line

    rng = random.Random(1505)
    alphabet = [b"\r\n", b"\r", b"\n", b"\0", b".", b"\x01", b"\x7f", b"\t", b"a", b"\xc3\xa9", b"\r\n.", b"\n\r"]
    checked = 0
    for _ in range(20000):
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert smuggling_refusal(data) == smuggling_found(data), data
        checked += smuggling_found(data) is not None
    assert checked > 5000  # the random data held every kind of refusal many times
    for _ in range(3000):
        lines = [b"x" * rng.choice([0, 1, 5, 996, 997, 998, 999, 1000, 2500]) for _ in range(rng.randint(1, 6))]
        stretch = b"\r\n".join(lines) + b"\r\n"
        assert _has_long_line(stretch, 998) == (max(map(len, lines)) > 998), [len(x) for x in lines]

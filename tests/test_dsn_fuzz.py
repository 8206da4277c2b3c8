"""Hostile input: the parser returns a Report or raises ParseError, nothing else, and fast.

Two fuzzers: hypothesis (random bytes and mail-shaped text) and a mutation fuzzer over every
real sample (cuts, flipped bytes, repeated and deleted runs, stray separators, line-ending
changes). Detector exceptions are not swallowed here (parser.STRICT), so a bug in one format
fails the test instead of hiding behind the fallback. The real speed bar (< 50 ms) is in
bench/parse.py; the limit here is generous so that a busy machine does not flake.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.dsn import ParseError, parse, parser, report_rows
from proxy.dsn.limits import DEFAULT_LIMITS
from proxy.model import Kind, Report

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "samples"
FILES = sorted(SAMPLES.glob("sisimai/maildir/**/*.eml")) + sorted(SAMPLES.glob("flufl/*.txt"))


def _bench_module():
    """bench/parse.py, loaded by path: its mutator is the one definition of "damage"."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bounceproxy_bench_parse", ROOT / "bench" / "parse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mutate = _bench_module().mutate


@pytest.fixture(autouse=True)
def strict():
    parser.STRICT = True
    yield
    parser.STRICT = False


def check(raw: bytes) -> Report | None:
    """Parses to a well-formed Report (or ParseError). Speed is the benchmark's to judge
    (`bench/parse.py --fuzz`), not a timed test's on a shared machine."""
    try:
        report = parse(raw)
    except ParseError:
        return None
    assert isinstance(report, Report) and isinstance(report.kind, Kind)
    rows = report_rows("fuzz", report)
    assert rows and all(isinstance(r, dict) for r in rows)
    return report


def test_empty_input_is_a_parse_error():
    for raw in (b"", b"   ", b"\r\n\r\n", b"\n"):
        with pytest.raises(ParseError):
            parse(raw)
    with pytest.raises(ParseError):
        parse("not bytes")  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
def test_random_bytes(raw: bytes):
    check(raw)


_FIELD = st.sampled_from([
    "Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"",
    "Content-Type: multipart/report; report-type=feedback-report; boundary=b",
    "Content-Type: message/delivery-status", "Content-Type: message/feedback-report",
    "Content-Type: message/rfc822", "Content-Type: text/rfc822-headers",
    "Content-Type: text/plain; charset=\"x-unknown-8bit\"", "Content-Type: text/plain; charset=iso-2022-jp",
    "Content-Transfer-Encoding: base64", "Content-Transfer-Encoding: quoted-printable",
    "Final-Recipient: rfc822; a@b.example", "Original-Recipient: rfc822;<a@b.example>", "Action: failed",
    "Action: delayed", "Status: 5.1.1 (x)", "Diagnostic-Code: smtp; 550 5.1.1 <a@b.example>... unknown",
    "Feedback-Type: abuse", "Original-Rcpt-To: c@d.example", "Auto-Submitted: auto-replied",
    "Subject: =?utf-8?b?5LiN5Zyo?=", "Subject: =?bogus?q?=FF=FE?=", "From: MAILER-DAEMON@x.example",
    "Message-ID: <id@x.example>", "X-Failed-Recipients: e@f.example", "--b", "--b--", "",
    "The following address(es) failed:", "  a@b.example", "<a@b.example>: 550 no", "Hi. This is the qmail-send program",
    "----- Original message -----", '{"notificationType":"Bounce","bounce":{"bouncedRecipients":[{}]}}',
])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_FIELD, st.text(max_size=80)), max_size=60),
       st.sampled_from(["\n", "\r\n", "\r"]))
def test_mail_shaped_text(lines: list[str], newline: str):
    raw = newline.join(lines).encode("utf-8", "surrogatepass")
    check(raw)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.sampled_from(["utf-8", "iso-2022-jp", "koi8-r", "nonsense", "utf-7"]))
def test_bodies_in_lying_charsets(body: bytes, charset: str):
    raw = (b"From: MAILER-DAEMON@x.example\nSubject: Undelivered Mail\nContent-Type: text/plain; charset="
           + charset.encode() + b"\nContent-Transfer-Encoding: 8bit\n\n<a@b.example>: " + body + b"\n")
    check(raw)


@pytest.mark.skipif(not FILES, reason=f"real samples not found at {SAMPLES}")
def test_mutations_of_every_real_sample():
    """20 mutations of each of the real samples (a fixed seed: failures reproduce)."""
    rng = random.Random(20240429)
    for path in FILES:
        raw = path.read_bytes()
        for _ in range(20):
            mutated = mutate(raw, rng)
            try:
                check(mutated)
            except AssertionError:
                raise
            except Exception as error:  # name the input that broke it
                raise AssertionError(f"{path.name}: {type(error).__name__}: {error}") from error


def test_pathological_sizes_parse_within_stated_limits():
    """Long lines, many parts, deep nesting, huge headers: each parses, and a stated limit reached is
    recorded on the report (their speed is `bench/parse.py --fuzz`'s to measure)."""
    at = b"a" * 200_000 + b"@" + b"b." * 50_000
    cases = [
        b"From: MAILER-DAEMON@x\nSubject: failure\n\n" + at,
        b"Subject: x\n" + b"X-H: " + b"=?utf-8?q?" + b"A" * 300_000 + b"?=\n\nbody",
        b"Content-Type: multipart/mixed; boundary=b\n\n" + b"--b\nContent-Type: text/plain\n\nx\n" * 3000,
        b"Content-Type: multipart/mixed; boundary=b0\n\n"
        + b"".join(b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1) for i in range(300)),
        b"From: postmaster@x\nSubject: Undeliverable\n\n" + b"<a@b.example>: " * 20000,
        b"Content-Type: message/delivery-status\n\n" + b"Final-Recipient: rfc822; a@b.example\n\n" * 5000,
        b"From: MAILER-DAEMON@x\n\n" + b" " * 100_000 + b"x@y.z",
        b"\n".join([b"From: MAILER-DAEMON@x", b"Subject: Delivery failure", b""] + [b"User unknown: " + b"x" * 70] * 4000),
        # the stdlib's cost grows with nesting depth times lines: both are bounded before it runs
        b"Content-Type: multipart/mixed; boundary=b0\n\n"
        + b"".join(b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1) for i in range(3000)),
        b"Content-Type: multipart/mixed; boundary=b0\n\n"
        + b"".join(b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1) for i in range(16))
        + b"x\n" * 200_000,
        b"Subject: x\n" + b"X-A: b\n" * 80_000 + b"\nbody",
        b"Subject: x\n\n" + b"\n" * 500_000,
        b"\r" * 300_000,
    ]
    for raw in cases:
        report = check(raw)
        if report is None:
            continue
        # What bounds the work is a stated limit, and a limit reached is said, never silent.
        over = (len(raw) > DEFAULT_LIMITS.max_bytes or raw.count(b"\n") > DEFAULT_LIMITS.max_lines
                or raw.count(b"boundary=") > 16)
        if over:
            assert report.truncated, raw[:60]

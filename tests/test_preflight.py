"""DNS preflight against a real authoritative DNS server on loopback (tests/dnsserver.py)."""
from __future__ import annotations

import asyncio
import time

import pytest

from proxy.config import PreflightConfig
from proxy.relay.preflight import DomainVerdict, Preflight, parse_resolver
from tests.dnsserver import ZONES, DNSServer


class Clock:
    """The injected clock: tests move time on instead of sleeping."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def dns_server():
    server = DNSServer(ZONES, negative_ttl=60, drop={"slow.test"}, servfail={"broken.test"},
                       refused={"refused.test"}, delay={"lag.test": 0.1})
    async with server:
        yield server


@pytest.fixture
def clock():
    return Clock()


def make(server: DNSServer, clock: Clock, **options) -> Preflight:
    options.setdefault("timeout", 1.0)
    config = PreflightConfig(enabled=True, resolvers=(server.address,), **options)
    return Preflight(config, clock=clock)


# --- one verdict per kind of domain -------------------------------------------------------------

@pytest.mark.parametrize("domain, verdict, detail", [
    ("good.test", "ok", "good.test has MX records"),
    ("alias.test", "ok", "alias.test has MX records"),
    ("nullmx.test", "null_mx", "nullmx.test accepts no mail (null MX, RFC 7505)"),
    ("aonly.test", "ok", "aonly.test has no MX but has an A record (implicit MX)"),
    ("aaaaonly.test", "ok", "aaaaonly.test has no MX but has an AAAA record (implicit MX)"),
    ("nomail.test", "no_mail_host", "nomail.test has no mail server (no MX, A or AAAA)"),
    ("nothere.test", "nxdomain", "nothere.test does not exist (NXDOMAIN)"),
    ("sub.nothere.test", "nxdomain", "sub.nothere.test does not exist (NXDOMAIN)"),
    ("Good.TEST.", "ok", "good.test has MX records"),
])
async def test_verdicts(dns_server, clock, domain, verdict, detail):
    result = await make(dns_server, clock).check(domain)
    assert result.verdict == verdict
    assert result.detail == detail
    assert result.refuse is (verdict in {"nxdomain", "null_mx", "no_mail_host"})


async def test_lookup_sequence(dns_server, clock):
    pf = make(dns_server, clock)
    await pf.check("good.test")
    assert dns_server.log == [("good.test", "MX", "udp")]  # MX present: no A/AAAA asked
    dns_server.log.clear()
    await pf.check("aonly.test")
    assert [(n, t) for n, t, _ in dns_server.log] == [("aonly.test", "MX"), ("aonly.test", "A")]
    dns_server.log.clear()
    await pf.check("nomail.test")
    assert [(n, t) for n, t, _ in dns_server.log] == [
        ("nomail.test", "MX"), ("nomail.test", "A"), ("nomail.test", "AAAA")]


async def test_truncated_answer_is_retried_over_tcp(dns_server, clock):
    result = await make(dns_server, clock).check("bigmx.test")
    assert result.verdict == "ok"
    assert [t for n, _, t in dns_server.log if n == "bigmx.test"] == ["udp", "tcp"]


async def test_replies_and_reasons(dns_server, clock):
    pf = make(dns_server, clock)
    nx = await pf.check("example.test")
    assert nx.reply("user@example.test") == (
        "550 5.1.2 <user@example.test>: recipient domain example.test does not exist (NXDOMAIN)")
    assert nx.reason == "hostunknown"
    nomail = await pf.check("nomail.test")
    assert nomail.reply("<a@nomail.test>") == (
        "550 5.1.2 <a@nomail.test>: recipient domain nomail.test has no mail server (no MX, A or AAAA)")
    assert nomail.reason == "hostunknown"
    null = await pf.check("nullmx.test")
    assert null.reply("b@nullmx.test") == (
        "556 5.1.10 <b@nullmx.test>: recipient domain nullmx.test accepts no mail (null MX, RFC 7505)")
    assert null.reason == "notaccept"
    ok = await pf.check("good.test")
    assert (ok.refuse, ok.reason) == (False, "")


async def test_address_literals_and_bad_syntax_need_no_lookup(dns_server, clock):
    pf = make(dns_server, clock)
    for literal in ("[192.0.2.1]", "[IPv6:2001:db8::1]"):
        result = await pf.check(literal)
        assert (result.verdict, result.refuse) == ("ok", False)
    for bad in ("foo..test", "-dash.test", "under_score.test", "a" * 64 + ".test",
                "sp ace.test", "", "[300.1.1.1]", "[tag:whatever]", "x\r\n.test"):
        result = await pf.check(bad)
        assert result.verdict == "no_mail_host", bad
        assert "not a valid" in result.detail
        line = result.reply("u@" + bad)
        assert line.startswith("550 5.1.2 ") and "\r" not in line and "\n" not in line
    assert dns_server.total == 0
    assert pf.stats["lookups"] == 0


async def test_idna(dns_server, clock):
    pf = make(dns_server, clock)
    result = await pf.check("bücher.test")
    assert result.verdict == "ok"
    assert result.domain == "xn--bcher-kva.test"
    assert dns_server.count("xn--bcher-kva.test", "MX") == 1
    again = await pf.check("BÜCHER.test.")
    assert again.verdict == "ok"
    assert (await pf.check("xn--bcher-kva.test")).verdict == "ok"
    assert dns_server.count("xn--bcher-kva.test") == 1
    assert pf.stats["cache_hits"] == 2
    assert (await pf.check("bücher-nicht.test")).verdict == "nxdomain"


# --- fail open ------------------------------------------------------------------------------------

async def test_timeout_fails_open_and_is_counted(dns_server, clock):
    pf = make(dns_server, clock, timeout=0.3)
    started = time.monotonic()
    result = await pf.check("slow.test")
    elapsed = time.monotonic() - started
    assert result.verdict == "unknown" and not result.refuse and result.reason == ""
    assert "slow.test MX" in result.detail and "0.3" in result.detail
    assert 0.25 < elapsed < 1.0
    assert pf.stats["timeouts"] == 1
    assert dns_server.count("slow.test") >= 1
    # "unknown" is kept a few seconds only: no hammering of a dead resolver, no long memory either.
    queries = dns_server.total
    assert (await pf.check("slow.test")).verdict == "unknown"
    assert dns_server.total == queries and pf.stats["lookups"] == 1
    clock.advance(6)
    assert (await pf.check("slow.test")).verdict == "unknown"
    assert dns_server.total > queries
    assert pf.stats["lookups"] == 2 and pf.stats["timeouts"] == 2


async def test_servfail_fails_open_and_is_counted(dns_server, clock):
    pf = make(dns_server, clock)
    result = await pf.check("broken.test")
    assert result.verdict == "unknown" and not result.refuse
    assert "SERVFAIL" in result.detail
    assert pf.stats["servfail"] == 1 and pf.stats["timeouts"] == 0


async def test_refused_fails_open_and_is_counted(dns_server, clock):
    pf = make(dns_server, clock)
    result = await pf.check("refused.test")
    assert result.verdict == "unknown" and not result.refuse
    assert "REFUSED" in result.detail
    assert pf.stats["refused"] == 1


async def test_dead_resolver_fails_open(clock):
    dead = DNSServer({})
    await dead.start()
    await dead.close()  # the port is now closed: ICMP port unreachable, or silence
    pf = Preflight(PreflightConfig(enabled=True, resolvers=(dead.address,), timeout=0.3), clock=clock)
    result = await pf.check("good.test")
    assert result.verdict == "unknown" and not result.refuse
    assert pf.stats["errors"] + pf.stats["timeouts"] == 1


async def test_second_resolver_answers_when_first_is_a_black_hole(dns_server, clock):
    async with DNSServer({}, drop_all=True) as hole:
        config = PreflightConfig(enabled=True, resolvers=(hole.address, dns_server.address),
                                 timeout=0.6)
        result = await Preflight(config, clock=clock).check("good.test")
        assert result.verdict == "ok"
        assert hole.count("good.test") == 1 and dns_server.count("good.test") == 1


# --- the cache ------------------------------------------------------------------------------------

async def test_positive_answers_are_cached_for_their_ttl(dns_server, clock):
    pf = make(dns_server, clock)
    assert (await pf.check("good.test")).verdict == "ok"
    assert (await pf.check("good.test")).verdict == "ok"
    assert dns_server.count("good.test") == 1
    assert pf.stats["cache_hits"] == 1 and pf.stats["lookups"] == 1
    clock.advance(299)  # MX TTL is 300
    await pf.check("good.test")
    assert dns_server.count("good.test") == 1
    clock.advance(2)
    assert (await pf.check("good.test")).verdict == "ok"
    assert dns_server.count("good.test") == 2
    assert pf.stats["lookups"] == 2


async def test_null_mx_uses_its_own_ttl(dns_server, clock):
    pf = make(dns_server, clock)
    await pf.check("nullmx.test")
    clock.advance(599)  # TTL 600
    assert (await pf.check("nullmx.test")).verdict == "null_mx"
    assert dns_server.count("nullmx.test") == 1
    clock.advance(2)
    await pf.check("nullmx.test")
    assert dns_server.count("nullmx.test") == 2


async def test_nxdomain_uses_soa_minimum(dns_server, clock):
    pf = make(dns_server, clock, negative_ttl=1000)
    await pf.check("gone.test")
    clock.advance(59)  # SOA TTL and MINIMUM are 60
    assert (await pf.check("gone.test")).verdict == "nxdomain"
    assert dns_server.count("gone.test") == 1
    clock.advance(2)
    await pf.check("gone.test")
    assert dns_server.count("gone.test") == 2


async def test_nxdomain_without_soa_uses_configured_negative_ttl(dns_server, clock):
    dns_server.send_soa = False
    pf = make(dns_server, clock, negative_ttl=30)
    assert (await pf.check("gone.test")).verdict == "nxdomain"
    clock.advance(29)
    await pf.check("gone.test")
    assert dns_server.count("gone.test") == 1
    clock.advance(2)
    await pf.check("gone.test")
    assert dns_server.count("gone.test") == 2


async def test_no_mail_host_and_implicit_mx_use_the_negative_ttl(dns_server, clock):
    pf = make(dns_server, clock, negative_ttl=1000)
    await pf.check("nomail.test")
    await pf.check("aonly.test")  # A TTL 120, but the MX NODATA is good for 60 only
    clock.advance(59)
    await pf.check("nomail.test")
    await pf.check("aonly.test")
    assert dns_server.count("nomail.test") == 3 and dns_server.count("aonly.test") == 2
    clock.advance(2)
    assert (await pf.check("nomail.test")).verdict == "no_mail_host"
    assert (await pf.check("aonly.test")).verdict == "ok"
    assert dns_server.count("nomail.test") == 6 and dns_server.count("aonly.test") == 4


async def test_cache_is_bounded_lru(dns_server, clock):
    pf = make(dns_server, clock, cache_size=2)
    await pf.check("good.test")
    await pf.check("nullmx.test")
    await pf.check("good.test")        # good.test is now the most recently used
    await pf.check("aonly.test")       # evicts nullmx.test
    assert pf.stats["cached"] == 2
    await pf.check("good.test")
    assert dns_server.count("good.test") == 1
    await pf.check("nullmx.test")
    assert dns_server.count("nullmx.test") == 2


async def test_cache_size_zero_caches_nothing(dns_server, clock):
    pf = make(dns_server, clock, cache_size=0)
    await pf.check("good.test")
    await pf.check("good.test")
    assert dns_server.count("good.test") == 2 and pf.stats["cache_hits"] == 0


# --- concurrency ----------------------------------------------------------------------------------

async def test_concurrent_checks_share_one_lookup(dns_server, clock):
    pf = make(dns_server, clock)
    results = await asyncio.gather(*(pf.check("lag.test") for _ in range(20)),
                                   pf.check("LAG.test."))
    assert {r.verdict for r in results} == {"ok"}
    assert dns_server.count("lag.test") == 1
    assert pf.stats["lookups"] == 1 and pf.stats["joined"] == 20


async def test_a_cancelled_check_does_not_cancel_the_shared_lookup(dns_server, clock):
    pf = make(dns_server, clock)
    first = asyncio.ensure_future(pf.check("lag.test"))
    second = asyncio.ensure_future(pf.check("lag.test"))
    await asyncio.sleep(0.02)
    first.cancel()
    assert (await second).verdict == "ok"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert dns_server.count("lag.test") == 1
    assert (await pf.check("lag.test")).verdict == "ok"  # and the result went into the cache
    assert dns_server.count("lag.test") == 1


async def test_different_domains_are_looked_up_in_parallel(dns_server, clock):
    for name in ("lag1.test", "lag2.test", "lag3.test"):
        dns_server.add(name, "MX 10 mx.good.test.")
        dns_server.delay[name] = 0.2
    pf = make(dns_server, clock)
    started = time.monotonic()
    results = await asyncio.gather(*(pf.check(n) for n in ("lag1.test", "lag2.test", "lag3.test")))
    assert [r.verdict for r in results] == ["ok"] * 3
    assert time.monotonic() - started < 0.5


# --- configuration --------------------------------------------------------------------------------

async def test_disabled_preflight_accepts_without_lookup(dns_server, clock):
    config = PreflightConfig(enabled=False, resolvers=(dns_server.address,))
    result = await Preflight(config, clock=clock).check("nothere.test")
    assert result.verdict == "ok" and not result.refuse
    assert dns_server.total == 0


def test_parse_resolver():
    ns = parse_resolver("192.0.2.53")
    assert (ns.address, ns.port) == ("192.0.2.53", 53)
    ns = parse_resolver("127.0.0.1:5353")
    assert (ns.address, ns.port) == ("127.0.0.1", 5353)
    ns = parse_resolver("2001:db8::53")
    assert (ns.address, ns.port) == ("2001:db8::53", 53)
    ns = parse_resolver("[2001:db8::53]:5300")
    assert (ns.address, ns.port) == ("2001:db8::53", 5300)
    for bad in ("dns.example", "127.0.0.1:0", "127.0.0.1:x", "[::1", "1.2.3.4:70000"):
        with pytest.raises(ValueError, match="preflight resolver"):
            parse_resolver(bad)


def test_verdict_is_small_and_frozen():
    verdict = DomainVerdict("nxdomain", "x.test does not exist (NXDOMAIN)", "x.test")
    with pytest.raises(AttributeError):
        verdict.verdict = "ok"  # type: ignore[misc]
    assert not hasattr(verdict, "__dict__")

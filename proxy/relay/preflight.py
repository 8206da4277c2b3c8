"""DNS preflight of recipient domains, checked at RCPT before anything goes upstream.

A recipient whose domain does not exist (NXDOMAIN), publishes a null MX (RFC 7505) or has no mail
host at all (no MX and no A/AAAA for the implicit MX of RFC 5321 5.1) can never be delivered: the
relay refuses it at once instead of letting the upstream accept it and bounce it later (which, on
SES, counts against the sender's bounce rate). Anything the DNS cannot settle (timeout, SERVFAIL,
REFUSED, network errors) is `unknown` and never refused: preflight fails open.

Verdicts are cached per domain for the TTL of the answer (negative answers: the SOA minimum of the
authority section, RFC 2308, else `negative_ttl`; `unknown`: a few seconds) in a bounded LRU, and
concurrent checks of one uncached domain share a single lookup.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver

from proxy.config import PreflightConfig

log = logging.getLogger(__name__)

UNKNOWN_TTL = 5.0          # how long a fail-open verdict is kept: spares a dead resolver
MAX_TTL = 86_400.0         # no verdict is kept longer than a day, whatever the zone says
MAX_NEGATIVE_TTL = 10_800.0  # RFC 2308 section 5: negative caching beyond 3 hours is unwise

REFUSE = frozenset({"nxdomain", "null_mx", "no_mail_host"})
_REPLY = {
    "nxdomain": ("550", "5.1.2"),
    "no_mail_host": ("550", "5.1.2"),
    "null_mx": ("556", "5.1.10"),
}
_REASON = {"nxdomain": "hostunknown", "no_mail_host": "hostunknown", "null_mx": "notaccept"}

# RFC 5321 Domain: sub-domain *("." sub-domain), sub-domain = Let-dig [Ldh-str]; at most 253 octets.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\Z")


@dataclass(frozen=True, slots=True)
class DomainVerdict:
    """What the DNS says about one recipient domain.

    verdict: "ok" | "nxdomain" | "null_mx" | "no_mail_host" | "unknown" (could not tell: fail open)
    detail:  one human sentence that starts with the domain, e.g.
             "example.invalid does not exist (NXDOMAIN)"
    domain:  the normalised (lower-case, A-label) domain, or the raw one when it is not a domain
    """

    verdict: str
    detail: str
    domain: str = ""

    @property
    def refuse(self) -> bool:
        """True when the recipient must be refused at RCPT."""
        return self.verdict in REFUSE

    @property
    def reason(self) -> str:
        """The Sisimai reason of the synchronous bounce: hostunknown, notaccept, or ""."""
        return _REASON.get(self.verdict, "")

    def reply(self, address: str) -> str:
        """The SMTP reply line for RCPT (no CRLF); only meaningful when `refuse` is True."""
        code, status = _REPLY.get(self.verdict, ("250", "2.1.5"))
        address = "".join(c for c in address.strip() if c.isprintable())  # never a CR/LF
        if address.startswith("<") and address.endswith(">"):
            address = address[1:-1]
        if not self.refuse:
            return f"{code} {status} <{address}>: recipient ok"
        return f"{code} {status} <{address}>: recipient domain {self.detail}"


def parse_resolver(spec: str) -> dns.nameserver.Do53Nameserver:
    """"ip", "ip:port", "[v6]:port" or a bare IPv6 address -> a Do53 nameserver."""
    text = spec.strip()
    host, port = text, 53
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"preflight resolver {spec!r}: expected \"ip\" or \"ip:port\"") from None
            port_text = rest[1:] if rest else "53"
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep:
                raise ValueError(f"preflight resolver {spec!r}: not an IP address") from None
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"preflight resolver {spec!r}: bad port {port_text!r}") from None
        if not 0 < port < 65536:
            raise ValueError(f"preflight resolver {spec!r}: port out of range")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"preflight resolver {spec!r}: {host!r} is not an IP address") from None
    return dns.nameserver.Do53Nameserver(host, port)


def _printable(text: str, limit: int = 100) -> str:
    """A user-supplied string made safe for an SMTP reply line: ASCII, no controls, bounded."""
    safe = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                   for c in text[:limit])
    return safe + ("..." if len(text) > limit else "")


def normalise(domain: str) -> tuple[str, DomainVerdict | None]:
    """(lookup name, None) for a domain to look up, or ("", verdict) when no lookup is needed:
    an address literal is "ok", a string that is not a domain name is "no_mail_host"."""
    text = domain.strip()
    if text.startswith("[") and text.endswith("]"):
        return "", _literal(text)
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        try:
            name = dns.name.from_unicode(name).to_text(omit_final_dot=True).lower()
        except (dns.exception.DNSException, UnicodeError, ValueError):
            name = ""
    if name and _DOMAIN.match(name):
        return name, None
    shown = _printable(text) or '""'
    return "", DomainVerdict("no_mail_host", f"{shown} is not a valid domain name", shown)


def _literal(text: str) -> DomainVerdict:
    inner = text[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        return DomainVerdict("no_mail_host", f"{_printable(text)} is not a valid address literal",
                             _printable(text))
    return DomainVerdict("ok", f"{text} is an address literal (not looked up)", text)


def _negative_ttl(response: dns.message.Message | None, default: float) -> float:
    """RFC 2308: the TTL of a negative answer is min(SOA TTL, SOA MINIMUM) from the authority."""
    if response is not None:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                return float(min(rrset.ttl, rrset[0].minimum, MAX_NEGATIVE_TTL))
    return default


def _positive_ttl(answer: dns.resolver.Answer) -> float:
    chain = getattr(answer, "chaining_result", None)
    ttl = chain.minimum_ttl if chain is not None else answer.rrset.ttl  # CNAME chains: the lowest
    return float(min(ttl, MAX_TTL))


class _Unknown(Exception):
    """The DNS could not settle it: carries the kind (timeout, servfail, refused, error)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class Preflight:
    """Checks recipient domains against the DNS, with a TTL-respecting LRU cache.

    `await check(domain)` never raises (barring cancellation) and never takes much longer than
    `config.timeout`. With `config.enabled` false every domain is "ok" without a lookup.
    """

    def __init__(self, config: PreflightConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        self._cache: OrderedDict[str, tuple[float, DomainVerdict]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[DomainVerdict]] = {}
        self._stats = dict(lookups=0, cache_hits=0, joined=0, timeouts=0, servfail=0, refused=0,
                           errors=0)
        servers = [parse_resolver(s) for s in config.resolvers]
        try:
            resolver = dns.asyncresolver.Resolver(configure=not servers)
        except dns.exception.DNSException as exc:
            raise RuntimeError(f"preflight: no resolvers configured and the system's cannot be "
                               f"read: {exc}") from None
        if servers:
            resolver.nameservers = servers
        resolver.cache = None           # ours is the cache; verdicts, not answers
        resolver.retry_servfail = False
        timeout = max(float(config.timeout), 0.01)
        resolver.lifetime = timeout
        # Per-try timeout: leaves room to retry once, or to move on to the next resolver.
        resolver.timeout = timeout / max(2, len(resolver.nameservers))
        self._resolver = resolver
        self._timeout = timeout

    @property
    def stats(self) -> dict[str, int]:
        """Counters: lookups (DNS lookups started), cache_hits, joined (checks that waited on a
        lookup already in flight), timeouts, servfail, refused, errors (other network errors)."""
        return dict(self._stats, cached=len(self._cache))

    async def check(self, domain: str) -> DomainVerdict:
        if not self.config.enabled:
            return DomainVerdict("ok", "preflight is disabled", domain)
        name, verdict = normalise(domain)
        if verdict is not None:
            return verdict
        entry = self._cache.get(name)
        if entry is not None:
            if entry[0] > self.clock():
                self._cache.move_to_end(name)
                self._stats["cache_hits"] += 1
                return entry[1]
            del self._cache[name]
        future = self._inflight.get(name)
        if future is None:
            future = asyncio.ensure_future(self._lookup(name))
            self._inflight[name] = future
        else:
            self._stats["joined"] += 1
        # shield: a client that hangs up mid-check does not cancel the lookup others wait on.
        return await asyncio.shield(future)

    def clear(self) -> None:
        """Forget every cached verdict."""
        self._cache.clear()

    # --- the lookup -------------------------------------------------------------------------

    async def _lookup(self, name: str) -> DomainVerdict:
        self._stats["lookups"] += 1
        try:
            try:
                verdict, ttl = await self._resolve(name)
            except _Unknown as exc:
                self._stats[exc.kind] += 1
                log.info("preflight %s: %s (fail open)", name, exc.detail)
                verdict, ttl = DomainVerdict("unknown", exc.detail, name), UNKNOWN_TTL
            except Exception as exc:  # a bug or an oddity of the resolver: still fail open
                self._stats["errors"] += 1
                log.warning("preflight %s: unexpected %r (fail open)", name, exc)
                verdict = DomainVerdict("unknown", f"{name} could not be checked ({type(exc).__name__})",
                                        name)
                ttl = UNKNOWN_TTL
            self._store(name, verdict, ttl)
            return verdict
        finally:
            self._inflight.pop(name, None)

    def _store(self, name: str, verdict: DomainVerdict, ttl: float) -> None:
        size = self.config.cache_size
        if size <= 0 or ttl <= 0:
            return
        self._cache[name] = (self.clock() + ttl, verdict)
        self._cache.move_to_end(name)
        while len(self._cache) > size:
            self._cache.popitem(last=False)

    async def _resolve(self, name: str) -> tuple[DomainVerdict, float]:
        deadline = time.monotonic() + self._timeout
        qname = dns.name.from_text(name)
        default_neg = float(self.config.negative_ttl)

        mx = await self._query(qname, dns.rdatatype.MX, deadline)
        if isinstance(mx, dns.resolver.NXDOMAIN):
            ttl = _negative_ttl(next(iter(mx.responses().values()), None), default_neg)
            return DomainVerdict("nxdomain", f"{name} does not exist (NXDOMAIN)", name), ttl
        if mx.rrset is not None:
            ttl = _positive_ttl(mx)
            if all(r.exchange == dns.name.root for r in mx.rrset):
                return DomainVerdict("null_mx", f"{name} accepts no mail (null MX, RFC 7505)", name), ttl
            return DomainVerdict("ok", f"{name} has MX records", name), ttl

        # The domain exists but has no MX: the implicit MX is the domain's own A/AAAA (RFC 5321 5.1).
        ttl = _negative_ttl(mx.response, default_neg)
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            answer = await self._query(qname, rdtype, deadline)
            if isinstance(answer, dns.resolver.NXDOMAIN):  # vanished between two queries
                ttl = min(ttl, _negative_ttl(next(iter(answer.responses().values()), None), default_neg))
                return DomainVerdict("nxdomain", f"{name} does not exist (NXDOMAIN)", name), ttl
            if answer.rrset is not None:
                kind = dns.rdatatype.to_text(rdtype)
                return (DomainVerdict("ok", f"{name} has no MX but has an {kind} record (implicit MX)",
                                      name), min(ttl, _positive_ttl(answer)))
            ttl = min(ttl, _negative_ttl(answer.response, default_neg))
        return DomainVerdict("no_mail_host", f"{name} has no mail server (no MX, A or AAAA)", name), ttl

    async def _query(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType,
                     deadline: float) -> dns.resolver.Answer | dns.resolver.NXDOMAIN:
        """An Answer (rrset None on NODATA) or the NXDOMAIN exception; _Unknown otherwise."""
        what = f"{qname.to_text(omit_final_dot=True)} {dns.rdatatype.to_text(rdtype)}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Unknown("timeouts", f"{what}: no answer within {self._timeout:g} s")
        try:
            return await self._resolver.resolve(qname, rdtype, search=False, lifetime=remaining,
                                                raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            return exc
        except dns.exception.Timeout:
            raise _Unknown("timeouts", f"{what}: no answer within {self._timeout:g} s") from None
        except dns.resolver.NoNameservers as exc:
            rcodes = set()
            for err in exc.kwargs.get("errors") or ():
                response = err[4] if len(err) > 4 else None
                if response is not None:
                    rcodes.add(response.rcode())
            if dns.rcode.SERVFAIL in rcodes:
                raise _Unknown("servfail", f"{what}: resolver answered SERVFAIL") from None
            if dns.rcode.REFUSED in rcodes:
                raise _Unknown("refused", f"{what}: resolver answered REFUSED") from None
            raise _Unknown("errors", f"{what}: {exc}") from None
        except (dns.exception.DNSException, OSError, EOFError) as exc:
            raise _Unknown("errors", f"{what}: {type(exc).__name__}: {exc}") from None

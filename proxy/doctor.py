"""`bounceproxy doctor`: checks a deployment, one line per check, with what to fix."""
from __future__ import annotations

import asyncio
import re
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from proxy.config import Config
from proxy.relay.preflight import parse_resolver

PASS, WARN, FAIL = "pass", "warn", "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    status: str
    name: str
    detail: str

    def line(self) -> str:
        return f"[{self.status:>4}] {self.name}: {self.detail}"

    def json(self) -> dict:
        return {**asdict(self), "status": self.status.lower()}


# A sender domain worth asking DNS about: the null sender (<>) and other junk from the log are not.
_DOMAIN = re.compile(r"(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}", re.IGNORECASE)


def is_domain(text: str) -> bool:
    return bool(_DOMAIN.fullmatch(text or ""))


def spf_advice(config: Config) -> str:
    """What an SPF record must authorise depends on who sends the mail out."""
    up = config.upstream
    if up.profile == "ses":
        return "publish e.g. \"v=spf1 include:amazonses.com ~all\""
    return f"publish one that authorises the hosts your smarthost {up.host} sends from (e.g. \"v=spf1 a:{up.host} ~all\")"


def _resolver(config: Config) -> dns.asyncresolver.Resolver:
    resolvers = config.preflight.resolvers
    resolver = dns.asyncresolver.Resolver(configure=not resolvers)
    if resolvers:
        resolver.nameservers = [parse_resolver(r) for r in resolvers]
    resolver.lifetime = max(config.preflight.timeout, 2.0)
    return resolver


async def _txt(resolver, name: str) -> list[str] | None:
    """TXT strings at name; [] when none; None when DNS could not answer."""
    try:
        answer = await resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException:
        return None
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]


async def _addresses(resolver, host: str) -> set[str]:
    found = set()
    for rdtype in ("A", "AAAA"):
        try:
            found |= {r.address for r in await resolver.resolve(host, rdtype)}
        except dns.exception.DNSException:
            pass
    return found


def _local_addresses() -> set[str]:
    addresses = {"127.0.0.1", "::1"}
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            addresses.add(info[4][0])
    except OSError:
        pass
    return addresses


async def check_bounce_mx(config: Config, resolver) -> list[Check]:
    inbound = config.inbound
    if not inbound.enabled:
        return [Check(WARN, "bounce MX", "[inbound] enabled is false: late bounces and complaints are not received")]
    checks = []
    if inbound.listen.is_loopback:
        checks.append(Check(WARN, "bounce MX listener", f"listens on {inbound.listen} only: the internet cannot reach it; "
                            "set [inbound] listen = \"0.0.0.0:25\" (or publish it through a port forward)"))
    local = _local_addresses()
    for domain in inbound.bounce_domains:
        try:
            answer = await resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN:
            checks.append(Check(FAIL, f"MX of {domain}", f"{domain} does not exist in DNS; publish "
                                f"\"{domain}. MX 10 <this host's name>.\""))
            continue
        except dns.resolver.NoAnswer:
            checks.append(Check(FAIL, f"MX of {domain}", f"no MX record; publish \"{domain}. MX 10 <this host's name>.\""))
            continue
        except dns.exception.DNSException as exc:
            checks.append(Check(WARN, f"MX of {domain}", f"DNS did not answer ({exc.__class__.__name__}); try again"))
            continue
        hosts = sorted(str(r.exchange).rstrip(".") for r in answer)
        ips = set()
        for host in hosts:
            ips |= await _addresses(resolver, host)
        if ips & local:
            checks.append(Check(PASS, f"MX of {domain}", f"{', '.join(hosts)} -> {', '.join(sorted(ips & local))} (this host)"))
        else:
            checks.append(Check(WARN, f"MX of {domain}", f"{', '.join(hosts)} -> {', '.join(sorted(ips)) or 'no address'}, "
                                "not an address of this host (fine behind NAT or a forward; otherwise point the MX here)"))
    return checks


async def check_sender_domains(domains: list[str], resolver, config: Config) -> list[Check]:
    upstream_profile = config.upstream.profile
    checks = []
    for domain in sorted(set(d.lower() for d in domains if is_domain(d))):
        spf = await _txt(resolver, domain)
        if spf is None:
            checks.append(Check(WARN, f"SPF of {domain}", "DNS did not answer"))
        else:
            records = [t for t in spf if t.lower().startswith("v=spf1")]
            if not records:
                checks.append(Check(FAIL, f"SPF of {domain}", f"no SPF record; {spf_advice(config)}"))
            elif len(records) > 1:
                checks.append(Check(FAIL, f"SPF of {domain}", "several v=spf1 records: receivers treat that as an error; merge them"))
            elif upstream_profile == "ses" and "amazonses.com" not in records[0]:
                checks.append(Check(WARN, f"SPF of {domain}", f"{records[0]!r} does not include amazonses.com "
                                    "(fine when SES uses a custom MAIL FROM domain with its own SPF)"))
            else:
                checks.append(Check(PASS, f"SPF of {domain}", records[0]))
        dmarc = await _txt(resolver, f"_dmarc.{domain}")
        if dmarc is None:
            checks.append(Check(WARN, f"DMARC of {domain}", "DNS did not answer"))
        else:
            records = [t for t in dmarc if t.lower().startswith("v=dmarc1")]
            if records:
                checks.append(Check(PASS, f"DMARC of {domain}", records[0]))
            else:
                checks.append(Check(FAIL, f"DMARC of {domain}", f"no DMARC record; publish \"_dmarc.{domain}. TXT "
                                    "\\\"v=DMARC1; p=none; rua=mailto:...\\\"\" to start"))
    return checks


def check_secrets(config: Config) -> list[Check]:
    checks = []
    inbound = config.inbound
    if inbound.verp:
        if config.secret(inbound.hmac_key_env):
            strength = len(config.secret(inbound.hmac_key_env) or "")
            status = PASS if strength >= 16 else WARN
            checks.append(Check(status, "VERP key", f"{inbound.hmac_key_env} is set"
                                + ("" if strength >= 16 else f" but only {strength} characters; use 32 or more")))
        elif config.upstream.profile == "simulator":
            checks.append(Check(WARN, "VERP key", f"{inbound.hmac_key_env} is not set: the simulator signs with a key "
                                "that lasts until restart; set it to a long random string before real mail"))
        else:
            checks.append(Check(FAIL, "VERP key", f"{inbound.hmac_key_env} is not set: VERP is off and late bounces "
                                "are matched by ids alone; set it to a long random string"))
    relay = config.relay
    if not relay.listen.is_loopback:
        users = config.secret(relay.auth_users_env)
        if not users and not relay.allow_networks:
            checks.append(Check(FAIL, "relay access", f"{relay.listen} is beyond loopback with neither users "
                                f"({relay.auth_users_env}) nor [relay] allow_networks: it refuses to start"))
        elif users and not relay.tls_cert:
            checks.append(Check(FAIL, "relay access", "AUTH beyond loopback without TLS: set [relay] tls_cert and tls_key"))
        else:
            checks.append(Check(PASS, "relay access", "beyond loopback, AUTH or allow_networks required"))
    else:
        checks.append(Check(PASS, "relay access", f"listens on {relay.listen} (loopback only)"))
    if not config.api.listen.is_loopback and not config.secret(config.api.token_env):
        checks.append(Check(FAIL, "API access", f"{config.api.listen} is beyond loopback: set {config.api.token_env}"))
    return checks


def check_profile(config: Config) -> list[Check]:
    """What the chosen upstream profile needs that DNS and a connection cannot tell."""
    up = config.upstream
    if up.profile == "ses":
        checks = []
        if not re.fullmatch(r"email-smtp(-fips)?\.[a-z0-9-]+\.amazonaws\.com", up.host):
            checks.append(Check(WARN, "SES endpoint", f"{up.host} is not an SES SMTP endpoint "
                                "(email-smtp.<region>.amazonaws.com); fine behind a tunnel, otherwise check [upstream] host"))
        if up.tls == "none":
            checks.append(Check(FAIL, "SES endpoint", "[upstream] tls = \"none\": SES requires TLS (starttls on 587, "
                                "25 or 2587; implicit on 465 or 2465)"))
        if config.inbound.enabled and config.inbound.verp:
            checks.append(Check(WARN, "SES bounce domain", f"SES sends bounces to the Return-Path on "
                                f"{config.inbound.bounce_domains[0]} only if that domain is a verified identity in SES "
                                "(console: Verified identities); doctor cannot see that"))
        return checks
    if up.profile == "smtp" and up.tls == "none" and not parse_host_is_loopback(up.host):
        return [Check(WARN, "upstream TLS", f"[upstream] tls = \"none\" to {up.host}, beyond loopback: mail and "
                      "credentials cross the network in clear")]
    return []


def parse_host_is_loopback(host: str) -> bool:
    from proxy.config import Address

    return Address(host, 0).is_loopback


async def check_upstream(config: Config) -> Check:
    up = config.upstream
    if up.profile == "simulator":
        return Check(WARN, "upstream", "simulator: nothing is delivered; set [upstream] profile and host for real mail")
    from proxy.relay.upstream import UpstreamAuthFailed, UpstreamPool, UpstreamUnavailable

    pool = UpstreamPool(up, config.relay_hostname, config.secret(up.username_env), config.secret(up.password_env))
    try:
        conn = await pool.acquire()
    except UpstreamAuthFailed as exc:
        return Check(FAIL, "upstream", f"{pool.name} refused the credentials in {up.username_env}/{up.password_env}: "
                     f"{exc.reply.line()}")
    except UpstreamUnavailable as exc:
        return Check(FAIL, "upstream", f"{pool.name}: {exc}")
    authed = "accepts our credentials" if pool.username else "reachable (no AUTH configured)"
    await pool.release(conn)
    await pool.close()
    return Check(PASS, "upstream", f"{pool.name} {authed}, SIZE {pool.max_size or 'not advertised'}")


async def check_open_relay(config: Config) -> list[Check]:
    """Ask the running bounce MX to relay to a foreign domain: it must refuse."""
    inbound = config.inbound
    if not inbound.enabled:
        return []
    host = "127.0.0.1" if inbound.listen.host in ("0.0.0.0", "") else ("::1" if inbound.listen.host == "::" else inbound.listen.host)
    smtp = aiosmtplib.SMTP(hostname=host, port=inbound.listen.port, start_tls=False, timeout=5)
    try:
        await smtp.connect()
    except (aiosmtplib.SMTPException, OSError):
        return [Check(WARN, "bounce MX relay test", f"nothing answers on {inbound.listen} (is `bounceproxy serve` running?)")]
    try:
        await smtp.ehlo()
        await smtp.mail("")
        reply = await smtp.execute_command(b"RCPT", b"TO:<postmaster@example.com>")
        await smtp.quit()
    except (aiosmtplib.SMTPException, OSError) as exc:
        return [Check(WARN, "bounce MX relay test", f"conversation failed: {exc}")]
    if reply.code >= 500:
        return [Check(PASS, "bounce MX relay test", f"refuses foreign recipients ({reply.code} {reply.message[:60]})")]
    return [Check(FAIL, "bounce MX relay test", f"accepted RCPT to a foreign domain ({reply.code}): it is an open relay")]


def check_store(config: Config) -> Check:
    if config.store.backend == "postgresql":
        return Check(PASS, "store", f"PostgreSQL {config.store.url} (checked below)")
    path = Path(config.store.path)
    if path.exists():
        return Check(PASS, "store", f"{path} ({path.stat().st_size} bytes)")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists():
        return Check(WARN, "store", f"{path} does not exist yet; `bounceproxy serve` creates it")
    return Check(FAIL, "store", f"directory {parent} does not exist ([store] path)")


async def check_store_connects(config: Config) -> Check:
    """PostgreSQL: the server answers with these credentials and the schema is this bounceproxy's."""
    from proxy.store import StoreError, open_store

    try:
        store = await open_store(config.store, readonly=True)
    except StoreError as exc:
        return Check(FAIL, "store connection", str(exc))
    try:
        applied, known = await store.schema_version()
    except StoreError as exc:
        return Check(FAIL, "store connection", str(exc))
    finally:
        await store.close()
    return Check(PASS, "store connection", f"schema version {applied} of {known}")


async def run_checks(config: Config, sender_domains: list[str]) -> list[Check]:
    resolver = _resolver(config)
    checks = [check_store(config)]
    if config.store.backend == "postgresql":
        checks.append(await check_store_connects(config))
    checks += check_secrets(config)
    checks += check_profile(config)
    checks.append(await check_upstream(config))
    checks += await check_bounce_mx(config, resolver)
    checks += await check_open_relay(config)
    sender_domains = [d for d in sender_domains if is_domain(d)]
    if config.upstream.profile == "simulator" and not sender_domains:
        checks.append(Check(PASS, "sender domains", "not checked: the simulator delivers nothing, so SPF and DMARC "
                            "do not matter yet (pass --sender-domain to check one anyway)"))
    elif sender_domains:
        checks += await check_sender_domains(sender_domains, resolver, config)
    else:
        checks.append(Check(WARN, "sender domains", "none known yet (send mail first, or pass --sender-domain)"))
    return checks


async def gather_sender_domains(config: Config, extra: tuple[str, ...]) -> list[str]:
    domains = list(extra)
    if config.store.backend == "postgresql" or Path(config.store.path).exists():
        import time

        from proxy.store import StoreError, open_store

        try:
            store = await open_store(config.store, readonly=True)
        except StoreError:
            return domains  # the store check says why
        try:
            for row in await store.identity_stats(time.time() - 30 * 86400):
                if row.identity:
                    domains.append(row.identity)
        except StoreError:
            pass
        finally:
            await store.close()
    return domains


def run(config: Config, extra_domains: tuple[str, ...]) -> list[Check]:
    async def go():
        # The simulator's test senders need no SPF: only domains asked for are checked then.
        simulator = config.upstream.profile == "simulator"
        domains = list(extra_domains) if simulator else await gather_sender_domains(config, extra_domains)
        return await asyncio.wait_for(run_checks(config, domains), 120)

    return asyncio.run(go())

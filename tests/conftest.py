"""Shared fixtures: a scripted upstream SMTP server (aiosmtpd) on an ephemeral loopback port,
real TLS certificates from trustme, and a running bounceproxy Service on a real SQLite file."""
from __future__ import annotations

import asyncio
import dataclasses
import secrets
import shutil
import ssl
import time
from pathlib import Path

import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from proxy.app import Service
from proxy.config import (
    Address, ApiConfig, Config, InboundConfig, PreflightConfig, RelayConfig, StoreConfig, SuppressionConfig, UpstreamConfig,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "samples"
BIN = Path(shutil.which("bounceproxy") or ROOT / ".venv" / "bin" / "bounceproxy")


class ScriptedUpstream:
    """An upstream whose behaviour is chosen by the addresses a test uses.

    sender  unverified@…  -> 554 SES "not verified"      throttled@… -> 454 Throttling failure
    rcpt    unknown*@…    -> 550 5.1.1 user unknown      greylist*@… -> 450 4.2.0
            blocked*@…    -> 554 5.7.1 IP blocklisted    drop*@…     -> connection dropped
            stall*@…      -> no answer                   closing*@…  -> 421 and close
            contentfail*@ -> 554 5.6.0 after DATA        lostdata*@  -> dropped during DATA
    anything else is accepted: `250 Ok <SES-like id>` after DATA, and kept in self.messages.
    """

    def __init__(self):
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.mail_from: list[str] = []
        self.connections = 0
        self.auth_logins: list[str] = []
        self.rcpt_replies: dict[str, str] = {}  # local part -> the reply RCPT gets, verbatim

    async def handle_MAIL(self, server, session, envelope, address, options):
        self.mail_from.append(address)
        local = address.split("@")[0]
        if local == "unverified":
            return ("554 Message rejected: Email address is not verified. The following identities failed "
                    f"the check in region US-EAST-1: {address}")
        if local == "throttled":
            return "454 Throttling failure: Maximum sending rate exceeded."
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 Ok"

    async def handle_RCPT(self, server, session, envelope, address, options):
        local = address.split("@")[0].lower()
        if local in self.rcpt_replies:
            return self.rcpt_replies[local]
        if local.startswith("unknown"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in virtual mailbox table"
        if local.startswith("greylist"):
            return f"450 4.2.0 <{address}>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.com.html"
        if local.startswith("blocked"):
            return "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"
        if local.startswith("drop"):
            server.transport.abort()
            return "250 never seen"
        if local.startswith("stall"):
            await asyncio.sleep(30)
        if local.startswith("closing"):
            await server.push("421 4.4.2 upstream.test Service shutting down and closing transmission channel")
            server.transport.close()
            return "421 4.4.2 (not seen: the channel is closed)"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        rcpts = [r.split("@")[0].lower() for r in envelope.rcpt_tos]
        if any(r.startswith("contentfail") for r in rcpts):
            return "554 5.6.0 Message rejected: the message content is malformed"
        if any(r.startswith("lostdata") for r in rcpts):
            server.transport.abort()
            return "250 never seen"
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return f"250 Ok 0100018c{secrets.token_hex(4)}-{secrets.token_hex(4)}-000000"


class UpstreamServer:
    def __init__(self, handler, server, tls_context=None):
        self.handler = handler
        self.server = server
        self.port = server.sockets[0].getsockname()[1]


@pytest.fixture(scope="session")
def ca():
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(ca):
    return ca.issue_cert("localhost", "127.0.0.1")


@pytest.fixture(scope="session")
def ca_file(ca, tmp_path_factory):
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def start_upstream(handler=None, *, tls: ssl.SSLContext | None = None, users: dict | None = None,
                         size: int = 0) -> UpstreamServer:
    handler = handler or ScriptedUpstream()

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and users.get(auth_data.login.decode()) == auth_data.password.decode()
        if ok:
            handler.auth_logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)

    def factory():
        handler.connections += 1
        return SMTP(
            handler, hostname="upstream.test", data_size_limit=size or 33554432, enable_SMTPUTF8=True,
            tls_context=tls, require_starttls=bool(tls), authenticator=authenticator if users else None,
            auth_required=bool(users), auth_require_tls=bool(tls),
        )

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    return UpstreamServer(handler, server)


@pytest.fixture
async def upstream():
    up = await start_upstream()
    yield up
    up.server.close()


def make_config(tmp_path: Path, upstream_port: int | None = None, store_url: str | None = None, **sections) -> Config:
    """A Config on ephemeral loopback ports and a SQLite file under tmp_path (or the PostgreSQL
    database `store_url` names)."""
    up = UpstreamConfig(profile="simulator")
    if upstream_port is not None:
        up = UpstreamConfig(profile="smtp", host="127.0.0.1", port=upstream_port, tls="none",
                            command_timeout=5, connect_timeout=3, pool_size=4)
    relay = RelayConfig(listen=Address("127.0.0.1", 0), hostname="relay.test", message_id_domain="relay.test")
    inbound = InboundConfig(listen=Address("127.0.0.1", 0), hostname="mx.test", bounce_domains=("bounces.test",),
                            settle_seconds=0.2)
    store = StoreConfig(path=str(tmp_path / "bounceproxy.db"), commit_interval_ms=1)
    if store_url:
        store = StoreConfig(backend="postgresql", url=store_url, path="")
    base = {"relay": relay, "upstream": up, "inbound": inbound, "store": store,
            "api": ApiConfig(listen=Address("127.0.0.1", 0)), "preflight": PreflightConfig(),
            "suppression": SuppressionConfig()}
    for name, changes in sections.items():
        base[name] = dataclasses.replace(base[name], **changes)
    return Config(**base, source="test-config")


@pytest.fixture
async def service(tmp_path, upstream):
    async with Service(make_config(tmp_path, upstream.port)) as svc:
        yield svc


# PostgreSQL: one private server per test session (tests/pg.py), started only when a test asks for it.
@pytest.fixture(scope="session")
def pg_server():
    """A running tests.pg.PostgresServer (fsync off: fast, not durable); skips where the server
    binaries are missing."""
    from tests.pg import PG_SKIP_REASON, PostgresServer, find_postgres_bin

    if find_postgres_bin() is None:
        pytest.skip(PG_SKIP_REASON)
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server):
    """The URL of a fresh, empty database on pg_server (postgresql://bounceproxy@127.0.0.1:<port>/t_<random>),
    dropped after the test."""
    import warnings

    url = pg_server.create_database_sync()
    yield url
    try:
        pg_server.drop_database_sync(url.rsplit("/", 1)[1])
    except Exception as exc:  # the server goes away with the session anyway
        warnings.warn(f"pg_url: could not drop {url}: {exc!r}")


async def until(check, timeout: float = 30, step: float = 0.05):
    """Await `check()` until it gives something true, and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(step)


BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path):
    """Each backend in turn: `None` for the default SQLite file under tmp_path, or a fresh PostgreSQL
    database's URL (skipped with a reason where PostgreSQL cannot run)."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("pg_url")


@pytest.fixture
async def any_store(store_url, tmp_path):
    """An open Store on each backend in turn (a fresh log)."""
    from proxy.store import store_for_url

    store = store_for_url(store_url or f"sqlite:///{tmp_path / 'store.db'}")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def service_any(tmp_path, upstream, store_url):
    """`service` on each backend in turn: the same Service over SQLite, then over PostgreSQL."""
    async with Service(make_config(tmp_path, upstream.port, store_url=store_url)) as svc:
        yield svc

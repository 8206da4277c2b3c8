"""Builds the store, the relay, the bounce MX and the API from a Config, runs them, shuts down cleanly."""
from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import signal
import ssl
import time

import secrets

from proxy.api import api_token, start_api
from proxy.config import Config, ConfigError
from proxy.inbound.pipeline import Pipeline
from proxy.spool import SpoolHandler, SpoolWorkers, start_spool
from proxy.webhooks import WebhookDispatcher, start_webhooks
from proxy.inbound.server import InboundHandler, InboundSMTP, InboundWorker
from proxy.lifecycle import Sessions, changes, client_tls, settle_session_tasks
from proxy.relay.busypoll import BusyPoll
from proxy.relay.health import UpstreamHealth, failure_reason, probe_loop
from proxy.relay.server import Authenticator, RelayHandler, RelaySMTP, parse_users
from proxy.relay.simulator import SimulatorUpstream
from proxy.relay.upstream import UpstreamAuthFailed, UpstreamPool
from proxy.relay.verp import VerpSigner
from proxy.smtp_guard import Limits
from proxy.store import StoreError, open_store
from proxy.suppression import Suppressor

log = logging.getLogger("bounceproxy")

# On a shared store (PostgreSQL), a message pending for longer than this (or 2 x [upstream] command_timeout)
# has no live transfer behind it: it becomes possibly_sent.
IN_FLIGHT_MIN_BOUND = 600.0


class Service:
    """The running house. Usable from tests: `async with Service(config) as svc: ...`."""

    def __init__(self, config: Config, worker: int = 0):
        self.config = config
        self.worker = worker  # 0 runs everything; others (relay workers > 1) only the relay
        self.store = None
        self.upstream = None
        self.busy_poll: BusyPoll | None = None
        self.relay_handler: RelayHandler | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self.relay_address: tuple[str, int] | None = None
        self.inbound_address: tuple[str, int] | None = None
        self.signer: VerpSigner | None = None
        self.pipeline: Pipeline | None = None
        self.suppressor: Suppressor | None = None
        self.preflight = None
        self.api_runner = None
        self.api_address: tuple[str, int] | None = None
        self.inbound_worker: InboundWorker | None = None
        self.health: UpstreamHealth | None = None  # the upstream's state, for /healthz and /metrics
        self._probe: asyncio.Task | None = None
        self._sweeper: asyncio.Task | None = None  # PostgreSQL: marks stale in-flight messages (_sweep_loop)
        self.webhooks: WebhookDispatcher | None = None  # [webhooks]: sends the outbox (worker 0)
        self.spool: SpoolWorkers | None = None  # [relay] mode = "spool": delivers the queue (worker 0)
        self.sessions = Sessions()  # both listeners' sessions: drained on SIGTERM, new certificate on SIGHUP
        self.client_tls: ssl.SSLContext | None = None  # what the next relay session offers at STARTTLS
        self.verbose = False  # `serve -v`: debug whatever [log] level says

    async def __aenter__(self) -> "Service":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def _upstream(self):
        cfg = self.config.upstream
        if cfg.profile == "simulator":
            log.warning("no upstream configured: using the built-in SES mailbox simulator, NOTHING IS DELIVERED")
            return SimulatorUpstream(cfg.simulator_late_bounce, cfg.simulator_async_delay)
        username = self.config.secret(cfg.username_env)
        password = self.config.secret(cfg.password_env)
        if cfg.profile == "ses" and not (username and password):
            raise ConfigError(
                f"{self.config.source}: [upstream] profile \"ses\" needs SMTP credentials in the environment "
                f"variables {cfg.username_env} and {cfg.password_env}"
            )
        return UpstreamPool(cfg, self.config.relay_hostname, username, password)

    def _client_tls(self) -> ssl.SSLContext | None:
        return client_tls(self.config.relay, self.config.source)

    async def start(self) -> None:
        cfg = self.config
        relay = cfg.relay
        users = parse_users(cfg.secret(relay.auth_users_env))
        beyond_loopback = not relay.listen.is_loopback
        tls = self.client_tls = self._client_tls()
        auth_needed = relay.require_auth or beyond_loopback or bool(relay.allow_networks)
        if (relay.require_auth or beyond_loopback) and not users and not relay.allow_networks:
            raise ConfigError(
                f"{cfg.source}: [relay] listen {relay.listen} is beyond loopback: set users in the environment "
                f"variable {relay.auth_users_env} (user:password,...) or [relay] allow_networks, "
                "so that it is not an open relay"
            )
        if users and beyond_loopback and tls is None:
            raise ConfigError(
                f"{cfg.source}: [relay] AUTH beyond loopback needs TLS: set [relay] tls_cert and tls_key"
            )
        if cfg.api.enabled:
            api_token(cfg)  # beyond loopback without a token: refuse before anything listens
        started = time.time()
        try:
            self.store = await open_store(cfg.store)
        except StoreError as exc:  # the error names the store (its path or URL)
            raise ConfigError(f"{cfg.source}: [store] {'url' if self._shared_store else 'path'}: {exc}") from None
        # before any write: from here on, what the webhooks want is queued with the event it tells
        self.webhooks = await start_webhooks(cfg, self.store, dispatch=self.worker == 0)
        if self.worker == 0:
            await self._sweep_in_flight(started if not self._shared_store else started - self._in_flight_bound,
                                        at_start=True)
            if self._shared_store:
                self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop(), name="in-flight-sweep")
        self.upstream = self._upstream()
        if cfg.relay.busy_poll_us:
            self.busy_poll = BusyPoll(cfg.relay.busy_poll_us, yields=self._poll_yields)
        if isinstance(self.upstream, UpstreamPool):
            self.upstream.busy_poll = self.busy_poll
        self.health = UpstreamHealth(self.upstream.name)
        self.signer = self._verp_signer()
        if cfg.suppression.enabled:
            self.suppressor = Suppressor(cfg.suppression, self.store)
            await self.suppressor.start()
        if cfg.preflight.enabled:
            from proxy.relay.preflight import Preflight

            try:
                self.preflight = Preflight(cfg.preflight)
            except (ValueError, RuntimeError) as exc:
                raise ConfigError(f"{cfg.source}: [preflight] resolvers: {exc}") from None
        await self._probe_upstream()
        if cfg.inbound.enabled and self.worker == 0:
            await self._start_inbound()
        if relay.mode == "spool":
            if self.worker == 0:  # one set of delivery workers; other relay workers only queue (seen within 0.5 s)
                self.spool = await start_spool(cfg, self.store, self.upstream, self.suppressor, health=self.health)
            self.relay_handler = SpoolHandler(cfg, self.store, self.upstream, self.signer, self.suppressor,
                                              self.preflight, health=self.health,
                                              on_queued=self.spool.notify if self.spool else None)
        else:
            self.relay_handler = RelayHandler(cfg, self.store, self.upstream, self.signer, self.suppressor,
                                              self.preflight, health=self.health)
        size_limit = min(relay.max_message_size, self.upstream.max_size or relay.max_message_size)
        hostname = cfg.relay_hostname
        authenticator = Authenticator(users) if users else None
        self.relay_limits = Limits(relay.max_connections, relay.max_connections_per_ip, relay.max_session_seconds)
        if hasattr(self.store, "quiet"):  # SQLite: with one session open, commit in the loop's thread
            self.store.quiet = self._quiet

        def factory():
            return self.sessions.track(RelaySMTP(
                self.relay_handler, hostname=hostname, data_size_limit=size_limit, enable_SMTPUTF8=True,
                tls_context=self.client_tls, require_starttls=False, authenticator=authenticator,
                auth_required=relay.require_auth and not relay.allow_networks,
                auth_require_tls=tls is not None, auth_needed=auth_needed,
                timeout=relay.session_timeout, ident="bounceproxy relay", limits=self.relay_limits,
                busy_poll=self.busy_poll,
            ))

        server = await self._listen(factory, relay.listen, "[relay] listen", reuse_port=relay.workers > 1)
        self.relay_address = server.sockets[0].getsockname()[:2]
        log.info("relay%s listening on %s:%s -> upstream %s", f" worker {self.worker}" if relay.workers > 1 else "",
                 *self.relay_address, self.upstream.name)
        if cfg.api.enabled and self.worker == 0:
            on_events = self.suppressor.consider if self.suppressor is not None else None  # SES's notifications
            self.api_runner, self.api_address = await start_api(cfg, self.store, live_metrics=self._live_metrics,
                                                                health=self._health, on_events=on_events)
            log.info("API and dashboard on http://%s:%s/", *self.api_address)
        if isinstance(self.upstream, UpstreamPool) and cfg.upstream.probe_interval > 0:  # last: nothing fails after
            self._probe = asyncio.get_running_loop().create_task(
                probe_loop(self.upstream, self.health, cfg.upstream.probe_interval), name="upstream-probe")

    def _poll_yields(self) -> bool:
        """Busy polling stands aside while another session is open (the loop has other work, and on a small
        machine a polling loop takes CPU from the processes whose answers it waits for) and while the
        SQLite writer thread has a batch (polling would keep the GIL from it)."""
        writing = getattr(self.store, "writing", None)
        return not self._quiet() or (writing is not None and writing())

    def _quiet(self) -> bool:
        """At most one SMTP session open on this process's listeners (the API's rare requests aside)."""
        inbound = getattr(self, "inbound_limits", None)
        return self.relay_limits.open_total + (inbound.open_total if inbound is not None else 0) <= 1

    # -- messages left in flight -------------------------------------------------------------
    # A message is `pending` from the commit just before its end of data goes upstream to the commit of the
    # upstream's answer. On SQLite (one host, these processes) every pending row older than this start was
    # left by a previous run. On PostgreSQL other relays may share the log and have transfers in flight:
    # only rows older than any live transfer can be are marked, at start and then periodically (a relay that
    # died leaves its rows for the others, or its own next start, to mark).
    @property
    def _shared_store(self) -> bool:
        return getattr(self.config.store, "backend", "sqlite") == "postgresql"

    @property
    def _in_flight_bound(self) -> float:
        """Seconds no live transfer stays pending longer than: DATA and the body's end each wait at most
        [upstream] command_timeout for their reply (with room for the commits around them)."""
        return max(IN_FLIGHT_MIN_BOUND, 2 * self.config.upstream.command_timeout)

    async def _sweep_in_flight(self, before: float, at_start: bool = False) -> int:
        left = await self.store.mark_possibly_sent(before=before)
        if left:
            log.warning("%d message(s) were in flight when %s: marked possibly_sent "
                        "(`bounceproxy messages --status possibly_sent`)", left,
                        "bounceproxy last stopped" if at_start and not self._shared_store else
                        f"their relay stopped or lost the store (pending for over {self._in_flight_bound:.0f}s)")
        return left

    async def _sweep_loop(self) -> None:
        every = max(30.0, self._in_flight_bound / 4)
        while True:
            await asyncio.sleep(every)
            try:
                await self._sweep_in_flight(time.time() - self._in_flight_bound)
            except Exception as exc:  # noqa: BLE001 - retried at the next tick
                log.warning("marking stale in-flight messages failed: %s", exc)

    def _health(self) -> str | None:
        """None when healthy, else why not: what `/healthz` answers with HTTP 503."""
        if self.health is not None and not self.health.up:
            return f"upstream {self.health.name} unavailable: {self.health.reason}"
        if self.store is not None and getattr(self.store, "failing", False):
            return "the bounce log refuses writes (clients get 451 4.3.0)"
        return None

    def _live_metrics(self) -> dict[str, float]:
        """Process counters for /metrics, beside the figures the API reads from the store."""
        m: dict[str, float] = {}
        if self.relay_handler:
            m["bounceproxy_relay_open_sessions"] = self.relay_limits.open_total
            m["bounceproxy_relay_refused_connections_total"] = self.relay_limits.refused
        if self.inbound_worker:
            m["bounceproxy_inbound_queue"] = self.inbound_worker.queue.qsize()
        if self.pipeline:
            m["bounceproxy_inbound_processed_total"] = self.pipeline.processed
        if isinstance(self.upstream, UpstreamPool):
            m["bounceproxy_upstream_connects_total"] = self.upstream.connects
        if self.busy_poll is not None:
            for side, window in self.busy_poll.windows.items():
                m[f'bounceproxy_relay_busy_poll_window_seconds{{side="{side}"}}'] = window.size
        if self.health is not None:
            m.update(self.health.metrics())
        if self.suppressor:
            m["bounceproxy_suppression_hits_total"] = self.suppressor.hits
            m["bounceproxy_suppression_index_entries"] = len(self.suppressor.index)
        if self.preflight:
            for name, value in self.preflight.stats.items():
                m[f'bounceproxy_preflight_total{{outcome="{name}"}}'] = value
        if self.store:
            m["bounceproxy_store_commits_total"] = self.store.commits
        if self.spool:
            m.update(self.spool.metrics())
        if self.webhooks:
            m["bounceproxy_webhooks_delivered_total"] = self.webhooks.delivered
            m["bounceproxy_webhooks_failed_total"] = self.webhooks.failed
            m["bounceproxy_webhooks_dead_total"] = self.webhooks.dead
            m["bounceproxy_webhooks_in_flight"] = self.webhooks.in_flight
        return m

    def _verp_signer(self) -> VerpSigner | None:
        inbound = self.config.inbound
        if not inbound.verp:
            return None
        key = self.config.secret(inbound.hmac_key_env)
        if not key and isinstance(self.upstream, SimulatorUpstream):
            log.warning("simulator: %s is not set; VERP tokens are signed with a key that lasts until restart",
                        inbound.hmac_key_env)
            key = secrets.token_hex(32)
        if not key:
            log.warning("VERP is off: set the HMAC key in the environment variable %s "
                        "(correlation falls back to message ids)", inbound.hmac_key_env)
            return None
        return VerpSigner(key.encode(), inbound.verp_local, inbound.bounce_domains[0])

    async def _start_inbound(self) -> None:
        cfg = self.config
        inbound = cfg.inbound
        self.pipeline = Pipeline(self.store, self.signer, inbound.bounce_domains, cfg.store.correlation_window_days,
                                 self.suppressor, inbound.parse_limits())
        self.inbound_worker = InboundWorker(self.pipeline, inbound.settle_seconds)
        await self.inbound_worker.start(recover=True)
        handler = InboundHandler(cfg, self.store, self.signer, self.inbound_worker.submit)
        hostname = inbound.hostname or cfg.relay_hostname
        self.inbound_limits = Limits(inbound.max_connections, inbound.max_connections_per_ip, inbound.max_session_seconds)

        def factory():
            return self.sessions.track(InboundSMTP(
                handler, hostname=hostname, size_limit=inbound.max_message_size,
                max_line_length=inbound.max_line_length, enable_SMTPUTF8=True, timeout=inbound.session_timeout,
                ident="bounceproxy bounce MX", limits=self.inbound_limits))

        server = await self._listen(factory, inbound.listen, "[inbound] listen")
        self.inbound_address = server.sockets[0].getsockname()[:2]
        log.info("bounce MX listening on %s:%s for %s", *self.inbound_address, ", ".join(inbound.bounce_domains))
        if isinstance(self.upstream, SimulatorUpstream):
            self.upstream.bounce_mx = self.inbound_address
            plain = inbound.plain_addresses
            self.upstream.fallback_return_path = plain[0] if plain else None

    async def _probe_upstream(self) -> None:
        """Learn the upstream's SIZE before advertising ours; an unreachable upstream is not fatal."""
        if not isinstance(self.upstream, UpstreamPool):
            return
        try:
            conn = await self.upstream.acquire()
        except Exception as exc:  # noqa: BLE001 - the relay still starts and answers 451 until it is back
            log.warning("upstream %s not reachable at start: %s", self.upstream.name, exc)
            reason = "auth" if isinstance(exc, UpstreamAuthFailed) else failure_reason(str(exc))
            self.health.failed(reason, str(exc), count=False)
            return
        await self.upstream.release(conn)
        self.health.ok()

    async def _listen(self, factory, address, key: str, reuse_port: bool = False) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(factory, host=address.host, port=address.port, reuse_address=True,
                                              reuse_port=reuse_port or None, backlog=1024)
        except OSError as exc:
            raise ConfigError(f"{self.config.source}: {key} {address}: cannot listen ({exc.strerror or exc})") from None
        self.servers.append(server)
        return server

    def reload(self) -> None:
        """SIGHUP: re-read the config; apply TLS certificates, suppression and reputation settings, the log
        level and the shutdown grace in place, keeping every session; name what needs a restart."""
        from proxy.config import load_config
        from proxy.logging_setup import set_level

        source = self.config.source
        try:
            new = load_config(None if source == "(defaults)" else source)
            tls = client_tls(new.relay, new.source) if self.client_tls is not None else None
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            return
        applied, restart = changes(self.config, new)
        relay = self.config.relay
        if tls is not None:  # the files may have changed under the same names: always take them again
            self.client_tls = tls
            self.sessions.set_tls(tls)
            applied.append("TLS certificate")
            relay = dataclasses.replace(relay, tls_cert=new.relay.tls_cert, tls_key=new.relay.tls_key)
        elif bool(new.relay.tls_cert) != (self.client_tls is not None):  # STARTTLS on or off: AUTH rules change
            applied = [a for a in applied if not a.startswith("[relay] tls_")]
            restart.append("[relay] tls_cert (turning STARTTLS on or off)")
        old = self.config  # what needs a restart keeps its running value
        suppression = dataclasses.replace(new.suppression, enabled=old.suppression.enabled, scope=old.suppression.scope)
        if self.suppressor is not None:
            from proxy.suppression import Policy

            self.suppressor.cfg, self.suppressor.policy = suppression, Policy(suppression)
        if self.relay_handler is not None:
            self.relay_handler.enforce = suppression.mode == "enforce"
            self.relay_handler.reply_style = suppression.reply_style
        self.config = dataclasses.replace(old, relay=relay, suppression=suppression, service=new.service,
                                          log=dataclasses.replace(new.log, format=old.log.format))
        log.info("reloaded %s: %s%s", source, ", ".join(dict.fromkeys(applied)) or "nothing changed",
                 f"; needs a restart to change: {', '.join(restart)}" if restart else "")
        set_level("debug" if self.verbose else new.log.level)  # last: the line above is written at the old level

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, 421 to idle sessions, transfers finish within [service] shutdown_grace."""
        grace = self.config.service.shutdown_grace if grace is None else grace
        for task in (self._probe, self._sweeper):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._probe = self._sweeper = None
        if self.api_runner is not None:
            await self.api_runner.cleanup()
            self.api_runner = None
        for server in self.servers:
            server.close()
        await self.sessions.drain(grace)
        await settle_session_tasks(sessions=self.sessions)  # closed sessions record their outcome before the store closes
        if self.spool is not None:  # deliveries in flight finish within the grace; the rest stay queued
            await self.spool.stop(grace)
            self.spool = None
        for server in self.servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 1)
            except asyncio.TimeoutError:
                pass
        self.servers.clear()
        if self.upstream is not None:
            await self.upstream.close()
        if self.inbound_worker is not None:
            await self.inbound_worker.stop()
        if self.suppressor is not None:
            await self.suppressor.stop()
        if self.webhooks is not None:  # after the listeners: what they recorded last stays queued
            await self.webhooks.stop()
            self.webhooks = None
        if self.store is not None:
            await self.store.close()
            self.store = None


async def serve(config: Config, worker: int = 0, children: list[int] | None = None, verbose: bool = False) -> None:
    service = Service(config, worker)
    service.verbose = verbose
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def hangup() -> None:  # reload in place, sessions stay; relay workers reload their own
        service.reload()
        _stop_children(children or [], signal.SIGHUP)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    try:
        await service.start()
    except BaseException:
        _stop_children(children or [])
        await service.stop()
        raise
    if worker > 0:
        loop.create_task(_exit_with_parent(stop))
    # What start-up made (modules, the config, tables) lives as long as the process: out of the cyclic
    # collector's way, so that its collections walk only what sessions make (Python's gc.freeze advice).
    gc.freeze()
    await stop.wait()
    log.info("shutting down%s: not accepting; idle sessions get 421 4.3.2, transfers have %gs to finish",
             f" worker {worker}" if worker else "", service.config.service.shutdown_grace)
    _stop_children(children or [])
    await service.stop()
    for pid in children or []:
        await loop.run_in_executor(None, _reap, pid)


async def _exit_with_parent(stop: asyncio.Event) -> None:
    parent = os.getppid()
    while not stop.is_set():
        await asyncio.sleep(1)
        if os.getppid() != parent:
            stop.set()


def _stop_children(children: list[int], sig: int = signal.SIGTERM) -> None:
    for pid in children:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def run(config: Config, verbose: bool = False) -> None:
    """Run in the foreground; with [relay] workers > 1, fork relay workers that share the port
    through SO_REUSEPORT (each with its own upstream pool) before any event loop exists."""
    from proxy.logging_setup import configure

    configure(config.log, verbose)  # [log] format and level; bodies, commands and SQL never logged
    workers = config.relay.workers
    if workers > 1 and config.relay.listen.port == 0:
        raise ConfigError(f"{config.source}: [relay] workers > 1 needs a fixed port in [relay] listen")
    children: list[int] = []
    worker = 0
    for index in range(1, workers):
        pid = os.fork()
        if pid == 0:
            children, worker = [], index
            break
        children.append(pid)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        asyncio.run(serve(config, worker, children, verbose))
    else:
        uvloop.run(serve(config, worker, children, verbose))
    if worker > 0:
        os._exit(0)

"""config.toml + environment -> a typed, validated Config.

Every key may be overridden by `BOUNCEPROXY_<SECTION>__<KEY>` (how Docker users configure it).
Secrets are never in the file: the file names the environment variable that holds each one.
Any mistake raises ConfigError with one line naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ENV_PREFIX = "BOUNCEPROXY_"


from proxy.errors import ConfigError  # noqa: E402  (re-exported: proxy.config.ConfigError)
from proxy.model import NEVER_ACTS, Correlation, NotificationType, WebhookTarget  # noqa: E402


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_address(text: str, default_port: int | None = None) -> Address:
    """`host:port`, `[v6]:port`, or a bare host when a default port is given."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep:
            raise ValueError(f"bad address {text!r}")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not port_text:
        if default_port is None:
            raise ValueError(f"address {text!r} needs a port (host:port)")
        port_text = str(default_port)
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"bad address {text!r} (expected host:port)")
    return Address(host, int(port_text))


@dataclass(frozen=True)
class RelayConfig:
    listen: Address = Address("127.0.0.1", 2525)
    hostname: str = ""  # defaults to the machine's FQDN
    message_id_domain: str = ""  # defaults to hostname
    max_message_size: int = 40 * 1024 * 1024
    require_auth: bool = False
    allow_networks: tuple[str, ...] = ()
    auth_users_env: str = "BOUNCEPROXY_RELAY_USERS"
    tls_cert: str = ""
    tls_key: str = ""
    session_timeout: float = 300.0
    max_session_seconds: float = 3600.0
    max_connections: int = 1000
    max_connections_per_ip: int = 500
    workers: int = 1
    mode: str = "passthrough"  # passthrough | spool (proxy.spool: 250 once queued, delivered by paced workers)
    busy_poll_us: int = 100  # the most the loop polls for a due answer (proxy.relay.busypoll); 0: never


@dataclass(frozen=True)
class UpstreamConfig:
    profile: str = "simulator"  # simulator | ses | smtp
    host: str = ""
    port: int = 587
    tls: str = "starttls"  # starttls | implicit | none
    verify_tls: bool = True
    ca_file: str = ""
    username_env: str = "BOUNCEPROXY_UPSTREAM_USERNAME"
    password_env: str = "BOUNCEPROXY_UPSTREAM_PASSWORD"
    pool_size: int = 16
    max_messages_per_connection: int = 100
    noop_after: float = 10.0
    idle_timeout: float = 50.0
    connect_timeout: float = 10.0
    command_timeout: float = 60.0
    probe_interval: float = 30.0  # seconds without an upstream attempt before the relay tries one itself; 0: never
    max_message_size: int = 40 * 1024 * 1024  # SES: 40 MB; lowered by the upstream's SIZE
    pipelining: bool = True  # where the upstream offers PIPELINING: RSET folded into the next MAIL, MAIL+RCPTs in one flight
    simulator_late_bounce: str = "latebounce@simulator.amazonses.com"
    simulator_async_delay: float = 1.0


@dataclass(frozen=True)
class InboundConfig:
    enabled: bool = True
    listen: Address = Address("127.0.0.1", 2526)
    hostname: str = ""
    bounce_domains: tuple[str, ...] = ("bounces.localhost",)
    plain_addresses: tuple[str, ...] = ()
    verp: bool = True
    verp_local: str = "bounce"
    hmac_key_env: str = "BOUNCEPROXY_VERP_KEY"
    max_message_size: int = 30 * 1024 * 1024
    max_line_length: int = 65536  # bytes in one line, CRLF not counted; real bounces exceed RFC 5321's 998
    session_timeout: float = 300.0
    max_session_seconds: float = 600.0
    settle_seconds: float = 1.0
    max_connections: int = 200
    max_connections_per_ip: int = 20
    # What one parse reads at most (proxy/dsn/limits.py); each limit a mail reaches is recorded on it.
    parse_max_bytes: int = 4 * 1024 * 1024
    parse_max_lines: int = 50_000
    parse_max_parts: int = 1_000
    parse_max_recipients: int = 10_000
    parse_max_text_chars: int = 131_072

    def parse_limits(self):
        from proxy.dsn.limits import Limits

        return Limits(max_bytes=self.parse_max_bytes, max_lines=self.parse_max_lines, max_parts=self.parse_max_parts,
                      max_recipients=self.parse_max_recipients, max_text_chars=self.parse_max_text_chars)


@dataclass(frozen=True)
class ApiConfig:
    enabled: bool = True
    listen: Address = Address("127.0.0.1", 8025)
    token_env: str = "BOUNCEPROXY_API_TOKEN"


@dataclass(frozen=True)
class PreflightConfig:
    enabled: bool = False
    resolvers: tuple[str, ...] = ()  # "ip" or "ip:port"; empty: the system's resolv.conf
    timeout: float = 2.0
    cache_size: int = 100_000
    negative_ttl: float = 300.0


@dataclass(frozen=True)
class SuppressionConfig:
    enabled: bool = True
    mode: str = "enforce"  # enforce | observe
    scope: str = "global"  # global | sender_domain
    reply_style: str = "bounceproxy"  # bounceproxy | ses
    act_on_correlations: tuple[str, ...] = ("verp", "upstream_id")
    soft_threshold: int = 3
    soft_window_days: float = 14.0
    soft_count_period_hours: float = 24.0  # at most one soft bounce counts per address per period
    soft_suppress_days: float = 7.0
    hard_expiry_days: float = 0.0  # 0: never expires
    complaint_expiry_days: float = 0.0
    refresh_seconds: float = 1.0
    warn_bounce_rate: float = 0.05
    warn_complaint_rate: float = 0.001
    pause_bounce_rate: float = 0.0  # 0: off
    pause_complaint_rate: float = 0.0
    rate_window_hours: float = 24.0
    rate_min_recipients: int = 100


@dataclass(frozen=True)
class StoreConfig:
    backend: str = "sqlite"  # sqlite | postgresql
    path: str = "bounceproxy.db"  # sqlite
    commit_interval_ms: float = 0.0  # sqlite
    busy_timeout_ms: int = 5000  # sqlite
    correlation_window_days: float = 30.0
    url: str = ""  # postgresql://user@host:port/db (no password)
    password_env: str = "BOUNCEPROXY_STORE_PASSWORD"  # postgresql: environment variable holding the password
    pool_size: int = 10  # postgresql: connections per process


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"  # text | json
    level: str = "info"  # debug | info | warning | error


@dataclass(frozen=True)
class ServiceConfig:
    shutdown_grace: float = 30.0  # seconds transfers in flight may take to finish after SIGTERM


# SNS's own hosts: sns.<region>.amazonaws.com, or .com.cn in China.
SNS_CERT_URL_PATTERN = r"https://sns\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?/SimpleNotificationService-[0-9a-f]+\.pem"
SNS_SUBSCRIBE_URL_PATTERN = r"https://sns\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?/\?Action=ConfirmSubscription&[^\s#]*"


@dataclass(frozen=True)
class SnsConfig:
    """SES notifications over SNS (proxy.sns), served by the API listener."""

    enabled: bool = False
    path: str = "/sns/ses"
    topic_arns: tuple[str, ...] = ()  # required when enabled: only these topics are heard
    cert_url_pattern: str = SNS_CERT_URL_PATTERN  # regex a SigningCertURL must match in full
    subscribe_url_pattern: str = SNS_SUBSCRIBE_URL_PATTERN  # regex a SubscribeURL must match in full
    max_age_seconds: float = 3600.0  # a message timestamped further away (past or future) is refused
    basic_auth_env: str = ""  # environment variable holding "user:password" (basic auth in the subscription URL)


@dataclass(frozen=True)
class WebhooksConfig:
    """Signed POSTs telling an application of each bounce, complaint, delay, send failure and
    suppression change (proxy.webhooks), sent from the store's durable outbox."""

    urls: tuple[str, ...] = ()
    secret_env: str = "BOUNCEPROXY_WEBHOOK_SECRET"  # environment variable holding the HMAC key; required with urls
    events: tuple[str, ...] = ()  # "<url> <type> <type>...": only these types go to that URL (others: all)
    max_attempts: int = 12  # tries before an entry is given up (`dead`; `bounceproxy webhooks retry`)
    timeout_seconds: float = 10.0
    concurrency: int = 16
    backoff_base_seconds: float = 5.0
    backoff_max_seconds: float = 3600.0

    def targets(self) -> tuple[WebhookTarget, ...]:
        """One WebhookTarget per URL with the types its `events` line names (None: every type)."""
        wanted = {line.split()[0]: frozenset(line.split()[1:]) for line in self.events if line.split()}
        return tuple(WebhookTarget(url, wanted.get(url)) for url in self.urls)


@dataclass(frozen=True)
class SpoolConfig:
    """Spool mode (`[relay] mode = "spool"`, proxy.spool): the queue's pace, retries and lifetime."""

    max_rate: float = 0.0  # recipients per second sent upstream at most; 0: learn it from the upstream's throttling
    initial_rate: float = 1.0  # where learning starts (doubling each second until the first throttling reply)
    concurrency: int = 8  # deliveries in flight at once (each holds one upstream connection)
    lifetime: str = "5d"  # how long a message may wait before its pending recipients expire (s, m, h, d)
    max_backoff_seconds: float = 3600.0  # retries after a 4xx: 5 s, 10 s, 30 s, 1 min, ... up to this
    quota_retry_seconds: float = 900.0  # after "Daily message quota exceeded": hold the queue, try again after this
    lease_seconds: float = 300.0  # a claimed message is another instance's to take after this (a worker died)

    @property
    def lifetime_seconds(self) -> float:
        return parse_duration(self.lifetime)


def parse_duration(text: str) -> float:
    """`30s`, `15m`, `12h`, `5d` (or a bare number of seconds) -> seconds; ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if not m:
        raise ValueError(f"{text!r} is not a duration such as 30s, 15m, 12h or 5d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


@dataclass(frozen=True)
class Config:
    relay: RelayConfig = field(default_factory=RelayConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    inbound: InboundConfig = field(default_factory=InboundConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    preflight: PreflightConfig = field(default_factory=PreflightConfig)
    suppression: SuppressionConfig = field(default_factory=SuppressionConfig)
    log: LogConfig = field(default_factory=LogConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    sns: SnsConfig = field(default_factory=SnsConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    source: str = "(defaults)"

    @property
    def relay_hostname(self) -> str:
        return self.relay.hostname or socket.getfqdn()

    @property
    def message_id_domain(self) -> str:
        return self.relay.message_id_domain or self.relay_hostname

    def secret(self, env_name: str) -> str | None:
        """A secret's value, read from the environment variable the config names."""
        return os.environ.get(env_name) if env_name else None


SECTIONS: dict[str, type] = {
    "relay": RelayConfig,
    "upstream": UpstreamConfig,
    "inbound": InboundConfig,
    "store": StoreConfig,
    "api": ApiConfig,
    "preflight": PreflightConfig,
    "suppression": SuppressionConfig,
    "log": LogConfig,
    "service": ServiceConfig,
    "sns": SnsConfig,
    "webhooks": WebhooksConfig,
    "spool": SpoolConfig,
}
# Keys holding a file name: relative ones in the file resolve against the file's directory.
PATH_KEYS = {("store", "path"), ("relay", "tls_cert"), ("relay", "tls_key"), ("upstream", "ca_file")}
CHOICES = {
    ("upstream", "profile"): {"simulator", "ses", "smtp"},
    ("upstream", "tls"): {"starttls", "implicit", "none"},
    ("relay", "mode"): {"passthrough", "spool"},
    ("store", "backend"): {"sqlite", "postgresql"},
    ("suppression", "mode"): {"enforce", "observe"},
    ("suppression", "scope"): {"global", "sender_domain"},
    ("suppression", "reply_style"): {"bounceproxy", "ses"},
    ("log", "format"): {"text", "json"},
    ("log", "level"): {"debug", "info", "warning", "error"},
}


def _convert(value: object, kind: object, where: str) -> object:
    """Check one value against its field's type; str values from the environment are parsed."""
    if kind is Address:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a \"host:port\" string")
        try:
            return parse_address(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise ConfigError(f"{where}: expected a non-negative integer, got {value!r}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return float(value)
        raise ConfigError(f"{where}: expected a non-negative number, got {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if typing.get_origin(kind) is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    raise ConfigError(f"{where}: unsupported type")  # pragma: no cover


def _env_value(text: str, kind: object) -> object:
    """Environment values are text; parse them as TOML scalars when the field is not a string."""
    if kind in (str, Address) or typing.get_origin(kind) is tuple:
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_config(path: str | os.PathLike | None = None, env: typing.Mapping[str, str] | None = None) -> Config:
    """Read the file (when given) and the environment into a Config, or raise ConfigError."""
    env = os.environ if env is None else env
    data: dict = {}
    source = "(defaults)"
    base: Path | None = None  # relative paths of the file (and defaults) resolve here, not in the cwd
    if path is not None:
        source = str(path)
        base = Path(path).resolve().parent
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read the file: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{source}: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None

    for name in data:
        if name not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{name}] (known: {', '.join(SECTIONS)})")
    overrides: dict[tuple[str, str], str] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        section, _, name = key[len(ENV_PREFIX):].lower().partition("__")
        if section not in SECTIONS or name not in {f.name for f in dataclasses.fields(SECTIONS[section])}:
            raise ConfigError(f"environment: {key} names no config key")
        overrides[(section, name)] = value

    sections = {}
    for section, cls in SECTIONS.items():
        raw = data.get(section, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        for key in raw:
            if key not in known:
                raise ConfigError(f"{source}: unknown key [{section}] {key}")
        values = {}
        for name in known:
            where = f"{source}: [{section}] {name}"
            if (section, name) in overrides:
                env_key = f"{ENV_PREFIX}{section.upper()}__{name.upper()}"
                where = f"environment: {env_key}"
                value = _env_value(overrides[(section, name)], hints[name])
            elif name in raw:
                value = raw[name]
            elif base is not None and (section, name) in PATH_KEYS and getattr(cls, name, ""):
                value = getattr(cls, name)  # a default file name, next to the config file too
            else:
                continue
            value = _convert(value, hints[name], where)
            if base is not None and (section, name) in PATH_KEYS and where.startswith(source) and value:
                value = str(base / Path(value).expanduser())  # absolute values stay as they are
            allowed = CHOICES.get((section, name))
            if allowed and value not in allowed:
                raise ConfigError(f"{where}: {value!r} is not one of {', '.join(sorted(allowed))}")
            values[name] = value
        sections[section] = cls(**values)
    config = Config(**sections, source=source)
    _validate(config)
    return config


def _validate_store(config: Config) -> None:
    src, store = config.source, config.store
    if store.backend != "postgresql":
        return
    url = urlsplit(store.url)
    if url.scheme not in ("postgresql", "postgres") or not url.hostname or not url.path.strip("/"):
        raise ConfigError(f"{src}: [store] url must be postgresql://user@host:port/database when backend is "
                          f"\"postgresql\" (got {store.url!r})")
    if url.password is not None:
        raise ConfigError(f"{src}: [store] url must not hold a password: put it in the environment variable "
                          f"named by [store] password_env ({store.password_env})")
    if store.pool_size < 1:
        raise ConfigError(f"{src}: [store] pool_size must be at least 1")


def _validate_sns(config: Config) -> None:
    src, sns = config.source, config.sns
    if not sns.path.startswith("/"):
        raise ConfigError(f"{src}: [sns] path must start with / (got {sns.path!r})")
    for name in ("cert_url_pattern", "subscribe_url_pattern"):
        try:
            re.compile(getattr(sns, name))
        except re.error as exc:
            raise ConfigError(f"{src}: [sns] {name} is not a regular expression: {exc}") from None
    for arn in sns.topic_arns:
        if not re.fullmatch(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]{1,256}", arn):
            raise ConfigError(f"{src}: [sns] topic_arns: {arn!r} is not an SNS topic ARN "
                              "(arn:aws:sns:<region>:<account>:<topic>)")
    if sns.enabled and not sns.topic_arns:
        raise ConfigError(f"{src}: [sns] topic_arns must name at least one topic when enabled is true")
    if not sns.max_age_seconds > 0:
        raise ConfigError(f"{src}: [sns] max_age_seconds must be more than 0 (got {sns.max_age_seconds})")


def _validate_webhooks(config: Config) -> None:
    src, hooks = config.source, config.webhooks
    for url in hooks.urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{src}: [webhooks] urls: {url!r} is not an http:// or https:// URL")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(f"{src}: [webhooks] urls: {parts.hostname} must not hold a user or password "
                              f"in the file: receivers check the signature made with [webhooks] secret_env")
    if len(set(hooks.urls)) != len(hooks.urls):
        raise ConfigError(f"{src}: [webhooks] urls: a URL is listed twice")
    if hooks.urls and not hooks.secret_env:
        raise ConfigError(f"{src}: [webhooks] secret_env must name the environment variable holding the "
                          "signing secret when urls are set")
    known, seen = {t.value for t in NotificationType}, set()
    for line in hooks.events:
        url, *types = line.split() or [""]
        if url not in hooks.urls:
            raise ConfigError(f"{src}: [webhooks] events: {line!r} must start with one of [webhooks] urls")
        if not types or any(t not in known for t in types):
            raise ConfigError(f"{src}: [webhooks] events: {line!r}: after the URL, one or more of "
                              f"{', '.join(sorted(known))} separated by spaces")
        if url in seen:
            raise ConfigError(f"{src}: [webhooks] events: {url} has two lines")
        seen.add(url)
    for name in ("max_attempts", "concurrency"):
        if getattr(hooks, name) < 1:
            raise ConfigError(f"{src}: [webhooks] {name} must be at least 1")
    for name in ("timeout_seconds", "backoff_base_seconds"):
        if not getattr(hooks, name) > 0:
            raise ConfigError(f"{src}: [webhooks] {name} must be more than 0 (got {getattr(hooks, name)})")
    if not hooks.backoff_max_seconds >= hooks.backoff_base_seconds:
        raise ConfigError(f"{src}: [webhooks] backoff_max_seconds must be at least backoff_base_seconds "
                          f"({hooks.backoff_base_seconds})")


def _validate_spool(config: Config) -> None:
    src, spool = config.source, config.spool
    try:
        lifetime = parse_duration(spool.lifetime)
    except ValueError as exc:
        raise ConfigError(f"{src}: [spool] lifetime: {exc}") from None
    if lifetime < 60:
        raise ConfigError(f"{src}: [spool] lifetime must be at least one minute (got {spool.lifetime!r})")
    if spool.concurrency < 1:
        raise ConfigError(f"{src}: [spool] concurrency must be at least 1")
    for name in ("initial_rate", "max_backoff_seconds", "quota_retry_seconds"):
        if not getattr(spool, name) > 0:
            raise ConfigError(f"{src}: [spool] {name} must be more than 0 (got {getattr(spool, name)})")
    if not spool.lease_seconds >= max(30.0, 2 * config.upstream.command_timeout):
        raise ConfigError(f"{src}: [spool] lease_seconds must be at least 30 and twice [upstream] command_timeout "
                          f"({2 * config.upstream.command_timeout:g}), got {spool.lease_seconds:g}")


def _validate(config: Config) -> None:
    src = config.source
    _validate_spool(config)
    _validate_webhooks(config)
    _validate_sns(config)
    up = config.upstream
    if up.profile != "simulator" and not up.host:
        raise ConfigError(f"{src}: [upstream] host is required when profile is {up.profile!r}")
    if up.profile == "simulator" and up.host:
        raise ConfigError(f"{src}: [upstream] host is set but profile is \"simulator\" (use \"ses\" or \"smtp\")")
    if up.pool_size < 1:
        raise ConfigError(f"{src}: [upstream] pool_size must be at least 1")
    relay = config.relay
    for net in relay.allow_networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"{src}: [relay] allow_networks: {net!r} is not a network (e.g. 10.0.0.0/8)") from None
    if bool(relay.tls_cert) != bool(relay.tls_key):
        raise ConfigError(f"{src}: [relay] tls_cert and tls_key must be set together")
    if relay.workers < 1:
        raise ConfigError(f"{src}: [relay] workers must be at least 1")
    if not 0 <= relay.busy_poll_us <= 10_000:
        raise ConfigError(f"{src}: [relay] busy_poll_us must be from 0 (never poll) to 10000 microseconds "
                          f"(got {relay.busy_poll_us})")
    _validate_store(config)
    known = {c.value for c in Correlation} - NEVER_ACTS
    sup = config.suppression
    if sup.soft_threshold < 1:
        raise ConfigError(f"{src}: [suppression] soft_threshold must be at least 1 (got {sup.soft_threshold})")
    for name in ("soft_window_days", "soft_suppress_days", "soft_count_period_hours"):
        if not getattr(sup, name) >= 0:  # NaN too
            raise ConfigError(f"{src}: [suppression] {name} must be a number of at least 0 (got {getattr(sup, name)})")
    for name in config.suppression.act_on_correlations:
        if name in NEVER_ACTS:
            raise ConfigError(f"{src}: [suppression] act_on_correlations: {name!r} can never act: the report's "
                              "evidence named another message's recipients, not this address")
        if name not in known:
            raise ConfigError(f"{src}: [suppression] act_on_correlations: {name!r} is not one of {', '.join(sorted(known))}")
    for name in ("parse_max_bytes", "parse_max_lines", "parse_max_parts", "parse_max_recipients", "parse_max_text_chars"):
        if getattr(config.inbound, name) < 1:
            raise ConfigError(f"{src}: [inbound] {name} must be at least 1")
    if not config.inbound.bounce_domains and config.inbound.enabled:
        raise ConfigError(f"{src}: [inbound] bounce_domains must name at least one domain")
    inbound = config.inbound
    if not 998 <= inbound.max_line_length <= max(998, inbound.max_message_size):
        raise ConfigError(f"{src}: [inbound] max_line_length must be between 998 (RFC 5321) and "
                          f"[inbound] max_message_size ({inbound.max_message_size}), got {inbound.max_line_length}")

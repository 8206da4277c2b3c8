"""The log an operator greps: Postfix-like `key=value` lines (or JSON), one per message and per inbound mail.

Message bodies, SMTP command lines and SQL never reach it at any level: the libraries that would write
them (aiosmtpd's session log, aiosqlite, aiosmtplib) are held at WARNING by a filter on the handler, so
`serve -v` (debug) shows bounceproxy's own detail and nothing of the mail it carries.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# Loggers that write what goes over the wire (commands, DATA lines, SQL statements): warnings only.
WIRE_LOGGERS = ("mail.log", "mail.debug", "aiosqlite", "aiosmtplib")
# Asked for at every AUTH by aiosmtpd itself (Session.login_data); nothing an operator can act on.
_NOISE = ("Session.login_data is deprecated",)

message_log = logging.getLogger("bounceproxy.message")
inbound_log = logging.getLogger("bounceproxy.inbound")
auth_log = logging.getLogger("bounceproxy.auth")

_handler: logging.Handler | None = None


class WireFilter(logging.Filter):
    """Drops the wire loggers' chatter below WARNING and aiosmtpd's deprecation notice."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(WIRE_LOGGERS) and record.levelno < logging.WARNING:
            return False
        if record.name.startswith("mail.") and any(n in str(record.msg) for n in _NOISE):
            return False
        return True


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second: int | None = None
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """logging's own format, the date and time part made once a second, not once a line (the handler's
        lock is held while formatting)."""
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = second
        return self.default_msec_format % (self._stamp, record.msecs)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a structured line's fields become keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(log_config, verbose: bool = False, stream=None) -> logging.Handler:
    """Install the one handler on the root logger ([log] format and level; -v is debug)."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_config.format == "json" else TextFormatter())
    handler.addFilter(WireFilter())
    root.addHandler(handler)
    _handler = handler
    set_level("debug" if verbose else log_config.level)
    logging.captureWarnings(True)  # warnings.warn() lines go through the same format
    # Neither format shows the caller's file and line, the thread or the process: logging need not look
    # them up for every line (the logging HOWTO's "Optimization"; a line per message is on the hot path).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    return handler


def set_level(level: str) -> None:
    """The level of bounceproxy's own lines (SIGHUP changes it); the wire loggers stay at WARNING."""
    logging.getLogger().setLevel(LEVELS.get(level, logging.INFO))
    for name in WIRE_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # An access line per scrape and dashboard poll is debug detail, not the mail log.
    logging.getLogger("bounceproxy.api.access").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


_BARE = re.compile(r"[^\s\"\\=\x00-\x1f\x7f]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def quote(value) -> str:
    """A value as `key=value` shows it: bare when it can be, else double-quoted with escapes."""
    text = "" if value is None else str(value)
    if text and _BARE.fullmatch(text):
        return text
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text) + '"'


def line(fields: dict) -> str:
    return " ".join(f"{k}={quote(v)}" for k, v in fields.items())


def emit(logger: logging.Logger, level: int, fields: dict) -> None:
    logger.log(level, "%s", line(fields), extra={"fields": fields})


def _angle(address: str | None) -> str:
    address = address or ""
    return address if address.startswith("<") and address.endswith(">") else f"<{address}>"


def outcome(message) -> str:
    """What happened to a message, in the words of Postfix's status=: sent, bounced, deferred, failed."""
    status = str(message.status)
    if status in ("sent", "partial"):
        return "sent"
    if status == "possibly_sent":
        return "possibly_sent"  # the upstream may have it; never reported as sent
    if status == "rejected":
        return "bounced"
    if message.send_failure:
        return "failed"
    reply = message.upstream_reply or ""
    if reply[:1] == "4" or any(str(r.status) == "deferred" for r in message.recipients):
        return "deferred"
    return "failed"


def log_message(message, relay: str) -> None:
    """The one line per relayed message, once its outcome is known."""
    refused = [r.address for r in message.recipients if str(r.status) != "accepted"]
    fields = {
        "id": message.id,
        "from": _angle(message.sender),
        "to": ",".join(_angle(r.address) for r in message.recipients) or "<>",
        "relay": relay,
        "status": outcome(message),
        "message_status": str(message.status),
        "reply": (message.upstream_reply or "")[:300],
        "delay": f"{max(0.0, time.time() - message.created_at):.2f}",
        "client": message.client_peer,
    }
    if message.client_user:
        fields["user"] = message.client_user
    if message.message_id:
        fields["message_id"] = f"<{message.message_id}>"
    if refused and fields["status"] == "sent":
        fields["refused"] = ",".join(_angle(a) for a in refused)
    if message.send_failure:
        fields["send_failure"] = message.send_failure[:300]
    emit(message_log, logging.INFO, fields)


def log_inbound(inbound_id: int, row, report, events) -> None:
    """The one line per mail the bounce MX received, once it is parsed and correlated (`row`: its
    proxy.model.InboundRecord)."""
    recipients = [e.recipient for e in events if e.recipient]
    correlations = sorted({str(e.correlation) for e in events if e.correlation is not None})
    messages = sorted({e.relay_id for e in events if e.relay_id})
    fields = {
        "id": f"inbound#{inbound_id}",
        "from": _angle(row.mail_from),
        "kind": str(report.kind),
        "format": report.format,
        "recipients": len(recipients),
        "to": ",".join(_angle(r) for r in recipients[:10]) + (",..." if len(recipients) > 10 else ""),
        "correlation": ",".join(correlations) or "none",
        "message": ",".join(messages[:10]) or "-",
        "peer": row.peer or "",
    }
    types = sorted({f"{e.bounce_type}/{e.reason}" for e in events if str(e.kind) == "bounce"})
    if types:
        fields["verdict"] = ",".join(types)
    emit(inbound_log, logging.INFO, fields)


def log_auth_failure(peer, login: str | None, why: str) -> None:
    ip = peer[0] if isinstance(peer, tuple) and peer else str(peer or "")
    fields = {"event": "auth_failed", "peer": ip, "user": (login or "")[:64], "why": why}
    emit(auth_log, logging.WARNING, fields)

"""`X-Bounceproxy-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.

The time is signed with the body so that a captured POST cannot be replayed later than the
receiver's tolerance; the receiver compares in constant time.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from importlib import metadata

HEADER = "X-Bounceproxy-Signature"
EVENT_ID_HEADER = "X-Bounceproxy-Event-Id"


def sign(secret: bytes, body: bytes, t: int) -> str:
    """The header's value for `body` sent at unix time `t`."""
    mac = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: bytes, body: bytes, header: str, tolerance: float = 300, now: float | None = None) -> bool:
    """What a receiver does (the README's ten lines): a v1 matches and t is recent."""
    try:
        fields = [part.split("=", 1) for part in header.split(",")]
        t = int(next(v for k, v in fields if k.strip() == "t"))
        macs = [v for k, v in fields if k.strip() == "v1"]
    except (StopIteration, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, mac) for mac in macs)


def user_agent() -> str:
    try:
        return f"bounceproxy/{metadata.version('bounceproxy')}"
    except metadata.PackageNotFoundError:
        return "bounceproxy"


def headers(secret: bytes, body: bytes, key: str, t: int | None = None) -> dict[str, str]:
    """Every header of one attempt: signed now (or at `t`), the event id for de-duplication."""
    return {
        "Content-Type": "application/json",
        "User-Agent": user_agent(),
        EVENT_ID_HEADER: key,
        HEADER: sign(secret, body, int(time.time()) if t is None else t),
    }

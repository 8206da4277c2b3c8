"""Signed VERP return paths: `<local>+<relay id>[-<recipient index>]-<signature>@<bounce domain>`.

The token names the message (and, when known, which of its recipients) and carries a truncated
HMAC-SHA256 so that the bounce MX accepts only addresses it issued: a forged or altered token is
refused at RCPT and can never tie a bounce to a message. Everything is lower case because some
MTAs fold the case of the addresses they bounce to.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

SIGNATURE_CHARS = 10  # 50 bits of HMAC-SHA256
_TOKEN = re.compile(r"^([a-z2-7]{8,32})(?:-(\d{1,4}))?-([a-z2-7]{%d})$" % SIGNATURE_CHARS)


@dataclass(frozen=True, slots=True)
class VerpToken:
    relay_id: str  # the relay's id of the message (MessageRecord.id)
    recipient_index: int | None


class VerpSigner:
    def __init__(self, key: bytes, local: str, domain: str):
        if not key:
            raise ValueError("VERP needs a non-empty key")
        self.key = key
        self.local = local.lower()
        self.domain = domain.lower()

    def _signature(self, payload: str) -> str:
        digest = hmac.new(self.key, payload.encode("ascii"), hashlib.sha256).digest()
        return base64.b32encode(digest).decode("ascii").lower()[:SIGNATURE_CHARS]

    def address(self, relay_id: str, recipient_index: int | None = None) -> str:
        payload = relay_id if recipient_index is None else f"{relay_id}-{recipient_index}"
        return f"{self.local}+{payload}-{self._signature(payload)}@{self.domain}"

    def verify(self, address: str, domains: tuple[str, ...] | None = None) -> VerpToken | None:
        """The token of an address we issued, or None (wrong shape, domain or signature)."""
        local, _, domain = address.strip().strip("<>").lower().rpartition("@")
        if domain not in (domains or (self.domain,)):
            return None
        prefix, plus, token = local.partition("+")
        if not plus or prefix != self.local:
            return None
        m = _TOKEN.match(token)
        if not m:
            return None
        relay_id, index, signature = m.groups()
        payload = relay_id if index is None else f"{relay_id}-{index}"
        if not hmac.compare_digest(signature, self._signature(payload)):
            return None
        return VerpToken(relay_id, int(index) if index is not None else None)

"""Is this SNS message what SNS sent? Pure checks, no I/O (the certificate is fetched by the caller).

Written from AWS's "Verifying the signatures of Amazon SNS messages": the string to sign is the
message's own fields, each as "Key\\nValue\\n", in this order:
- Notification: Message, MessageId, Subject (only when present), Timestamp, TopicArn, Type;
- SubscriptionConfirmation / UnsubscribeConfirmation: Message, MessageId, SubscribeURL, Timestamp,
  Token, TopicArn, Type.
SignatureVersion 1 signs it with SHA1withRSA, 2 with SHA256withRSA (PKCS #1 v1.5), with the key of
the X.509 certificate at SigningCertURL. Every SNS message is hostile until all of this holds.
"""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

NOTIFICATION = "Notification"
SUBSCRIBE = "SubscriptionConfirmation"
UNSUBSCRIBE = "UnsubscribeConfirmation"

SIGNED_FIELDS = {
    NOTIFICATION: ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    SUBSCRIBE: ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    UNSUBSCRIBE: ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
OPTIONAL_FIELDS = frozenset({"Subject"})  # signed only when the message has it
HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}


class Refused(Exception):
    """The message is not accepted: `status` (400 malformed, 403 not authentic) and a short reason
    that is safe to show the sender."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SnsMessage:
    """The fields of an SNS message that matter, every one a string as SNS sent it."""

    type: str
    message_id: str
    topic_arn: str
    timestamp: str
    message: str
    signature_version: str
    signature: str
    signing_cert_url: str
    fields: dict[str, str]  # the signed fields present, for the string to sign
    subscribe_url: str | None = None


def read_message(document: object) -> SnsMessage:
    """The SNS message in a decoded JSON body, or Refused: 400 when it is not shaped like one,
    403 when a field its signature needs is missing."""
    if not isinstance(document, dict):
        raise Refused(400, "the body is not a JSON object")
    kind = document.get("Type")
    if kind not in SIGNED_FIELDS:
        raise Refused(400, "Type is not Notification, SubscriptionConfirmation or UnsubscribeConfirmation")
    names = SIGNED_FIELDS[kind] + ("SignatureVersion", "Signature", "SigningCertURL")
    fields: dict[str, str] = {}
    for name in names:
        value = document.get(name)
        if value is None and name in OPTIONAL_FIELDS:
            continue
        if value is None:
            raise Refused(403, f"{name} is missing")
        if not isinstance(value, str):
            raise Refused(400, f"{name} is not a string")
        fields[name] = value
    signed = {k: fields[k] for k in SIGNED_FIELDS[kind] if k in fields}
    return SnsMessage(
        type=kind, message_id=fields["MessageId"], topic_arn=fields["TopicArn"], timestamp=fields["Timestamp"],
        message=fields["Message"], signature_version=fields["SignatureVersion"], signature=fields["Signature"],
        signing_cert_url=fields["SigningCertURL"], fields=signed, subscribe_url=fields.get("SubscribeURL"),
    )


def string_to_sign(msg: SnsMessage) -> bytes:
    """"Key\\nValue\\n" for each signed field present, in SNS's order."""
    return "".join(f"{k}\n{v}\n" for k, v in msg.fields.items()).encode("utf-8")


def check_topic(msg: SnsMessage, topics: frozenset[str] | set[str]) -> None:
    """Only the configured topics are heard: checked first, before any certificate is fetched."""
    if msg.topic_arn not in topics:
        raise Refused(403, "TopicArn is not one of [sns] topic_arns")


def check_fresh(msg: SnsMessage, now: float, max_age: float) -> None:
    """A captured message replayed long after (or dated ahead) is refused."""
    try:
        moment = datetime.fromisoformat(msg.timestamp)
    except ValueError:
        raise Refused(403, "Timestamp is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise Refused(403, "Timestamp has no time zone")
    if abs(now - moment.timestamp()) > max_age:
        raise Refused(403, "Timestamp is too far from now (see [sns] max_age_seconds)")


def check_cert_url(msg: SnsMessage, pattern: re.Pattern[str]) -> None:
    """The certificate may come only from SNS's own hosts ([sns] cert_url_pattern), matched in full."""
    if not pattern.fullmatch(msg.signing_cert_url):
        raise Refused(403, "SigningCertURL is not an SNS certificate URL")


def signature_scheme(msg: SnsMessage) -> type[hashes.HashAlgorithm]:
    """The hash SignatureVersion names; checked before any certificate is fetched."""
    try:
        return HASHES[msg.signature_version]
    except KeyError:
        raise Refused(403, "SignatureVersion is not 1 or 2") from None


def parse_certificate(pem: bytes) -> x509.Certificate:
    """A PEM certificate as fetched from SigningCertURL, or Refused."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise Refused(403, "the signing certificate is not a PEM certificate") from None


def certificate_key(cert: x509.Certificate, now: float) -> rsa.RSAPublicKey:
    """The RSA key of a certificate valid now (checked at each use: certificates are cached), or Refused."""
    if not cert.not_valid_before_utc.timestamp() <= now <= cert.not_valid_after_utc.timestamp():
        raise Refused(403, "the signing certificate is not valid now")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise Refused(403, "the signing certificate does not hold an RSA key")
    return key


def check_signature(msg: SnsMessage, key: rsa.RSAPublicKey) -> None:
    """The signature over the string to sign, by the certificate's key, or Refused."""
    algorithm = signature_scheme(msg)
    try:
        signature = base64.b64decode(msg.signature, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(403, "Signature is not base64") from None
    try:
        key.verify(signature, string_to_sign(msg), padding.PKCS1v15(), algorithm())
    except InvalidSignature:
        raise Refused(403, "the signature does not verify") from None

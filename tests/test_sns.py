"""SES notifications over SNS (proxy.sns), over real HTTP on loopback: a certificate and its RSA key
made here, served by a loopback aiohttp server as the "SigningCertURL", messages signed as SNS signs
them, the intake mounted on its own aiohttp app, and what was recorded read back through the Store
protocol, on SQLite and PostgreSQL alike."""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import time
import uuid

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from proxy.config import Config, ConfigError, SnsConfig, load_config
from proxy.model import (
    BounceType, Correlation, Kind, MessageRecord, MessageStatus, RecipientRecord, RecipientStatus, Source,
)
from proxy.sns import sns_routes
from proxy.sns.ses import read_notice
from proxy.store import EventFilter

TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-feedback"
CERT_PATH = "/SimpleNotificationService-0123456789abcdef.pem"
UPSTREAM_ID = "0100018c2b3c4d5e-6f708192-a3b4-4c5d-8e9f-0a1b2c3d4e5f-000000"
A = RecipientStatus.ACCEPTED


# -- the pieces: keys, a certificate, loopback servers ------------------------------------------
def make_certificate(key: rsa.RSAPrivateKey, days: int = 1) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def sns_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def forger_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Loopback:
    """An HTTP server on 127.0.0.1 that serves the certificate and SNS's confirmation URL, and counts
    every request it gets, by path."""

    def __init__(self, cert_pem: bytes):
        self.cert_pem = cert_pem
        self.hits: list[str] = []
        self.runner: web.AppRunner | None = None
        self.base = ""

    async def start(self) -> "Loopback":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.answer)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def answer(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        if request.path == CERT_PATH:
            return web.Response(body=self.cert_pem)
        if request.query.get("Action") == "ConfirmSubscription":
            return web.Response(text="<ConfirmSubscriptionResponse/>")
        return web.Response(status=404)

    async def stop(self) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def sns_host(sns_key):
    """The stand-in for sns.<region>.amazonaws.com."""
    server = await Loopback(make_certificate(sns_key)).start()
    yield server
    await server.stop()


@pytest.fixture
async def foreign_host(forger_key):
    """Any other host: nothing may ever be asked of it."""
    server = await Loopback(make_certificate(forger_key)).start()
    yield server
    await server.stop()


def sns_config(sns_host: Loopback, **changes) -> Config:
    port = sns_host.base.rsplit(":", 1)[1]
    sns = SnsConfig(enabled=True, topic_arns=(TOPIC,),
                    cert_url_pattern=rf"http://127\.0\.0\.1:{port}/SimpleNotificationService-[0-9a-f]+\.pem",
                    subscribe_url_pattern=rf"http://127\.0\.0\.1:{port}/\?Action=ConfirmSubscription&[^\s#]*")
    return Config(sns=dataclasses.replace(sns, **changes), source="test-config")


class Intake:
    """proxy.sns's routes on an aiohttp app of their own, on a loopback port."""

    def __init__(self, config: Config, store):
        self.config, self.store = config, store
        self.handed: list = []  # what on_events received

    async def start(self) -> "Intake":
        app = web.Application()
        app.add_routes(sns_routes(self.config, self.store, on_events=self.handed.extend))
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}{self.config.sns.path}"
        return self

    async def post(self, body, headers: dict | None = None) -> tuple[int, dict]:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        async with aiohttp.ClientSession() as session:
            async with session.post(self.url, data=data, headers={"Content-Type": "text/plain; charset=UTF-8",
                                                                   **(headers or {})}) as response:
                return response.status, await response.json()

    async def events(self):
        return [e.event for e in await self.store.list_events(EventFilter(source="ses"))]


@pytest.fixture
async def intake(any_store, sns_host):
    server = await Intake(sns_config(sns_host), any_store).start()
    yield server
    await server.runner.cleanup()


# -- SNS messages, signed as SNS signs them (written here from AWS's documentation, not from proxy.sns)
def iso(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sign(doc: dict, key: rsa.RSAPrivateKey, version: str = "2") -> dict:
    if doc["Type"] == "Notification":
        names = ["Message", "MessageId"] + (["Subject"] if "Subject" in doc else []) + ["Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    text = "".join(f"{name}\n{doc[name]}\n" for name in names).encode()
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(text, padding.PKCS1v15(), digest)
    return {**doc, "SignatureVersion": version, "Signature": base64.b64encode(signature).decode()}


def notification(sns_host: Loopback, ses: dict | str, key: rsa.RSAPrivateKey, *, version: str = "2",
                 message_id: str | None = None, topic: str = TOPIC, at: float | None = None,
                 cert_url: str | None = None, subject: str | None = None) -> dict:
    doc = {"Type": "Notification", "MessageId": message_id or str(uuid.uuid4()), "TopicArn": topic,
           "Message": ses if isinstance(ses, str) else json.dumps(ses), "Timestamp": iso(at or time.time()),
           "SigningCertURL": cert_url or sns_host.base + CERT_PATH,
           "UnsubscribeURL": f"{sns_host.base}/?Action=Unsubscribe&SubscriptionArn={TOPIC}:1"}
    if subject is not None:
        doc["Subject"] = subject
    return sign(doc, key, version)


def confirmation(sns_host: Loopback, key: rsa.RSAPrivateKey, subscribe_base: str, kind: str = "SubscriptionConfirmation") -> dict:
    token = "2336412f37fb687f5d51e6e2425c464de12884c4"
    doc = {"Type": kind, "MessageId": str(uuid.uuid4()), "Token": token, "TopicArn": TOPIC,
           "Message": f"You have chosen to subscribe to the topic {TOPIC}.",
           "SubscribeURL": f"{subscribe_base}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token={token}",
           "Timestamp": iso(time.time()), "SigningCertURL": sns_host.base + CERT_PATH}
    return sign(doc, key)


def mail(message_id: str = UPSTREAM_ID, header_id: str = "<order-1@shop.example>", to=("gone@b.example",)) -> dict:
    return {"timestamp": iso(time.time() - 60), "source": "app@shop.example", "messageId": message_id,
            "destination": list(to), "commonHeaders": {"messageId": header_id, "to": list(to), "subject": "Order"}}


def ses_bounce(bounce_type: str, subtype: str, recipients: list[dict], *, feedback: str | None = None,
               key: str = "notificationType", **mail_args) -> dict:
    return {key: "Bounce", "mail": mail(**mail_args), "bounce": {
        "bounceType": bounce_type, "bounceSubType": subtype, "bouncedRecipients": recipients,
        "timestamp": iso(time.time() - 30), "feedbackId": feedback or f"fb-{uuid.uuid4()}",
        "reportingMTA": "dsn; a8-1.smtp-out.amazonses.com", "remoteMtaIp": "192.0.2.25"}}


async def relayed(store, relay_id: str = "r1", recipients=("gone@b.example",)) -> None:
    """A message the relay sent, as the store knows it: SES's id is its upstream_id."""
    await store.record_message(MessageRecord(
        id=relay_id, created_at=time.time() - 120, sender="app@shop.example", message_id="order-1@shop.example",
        upstream_id=UPSTREAM_ID, status=MessageStatus.SENT, upstream_reply=f"250 Ok {UPSTREAM_ID}",
        recipients=[RecipientRecord(a, A, "250 2.1.5 Ok") for a in recipients]))


# -- subscription ----------------------------------------------------------------------------------
async def test_a_verified_confirmation_visits_its_subscribe_url_once(intake, sns_host, sns_key):
    status, body = await intake.post(confirmation(sns_host, sns_key, sns_host.base))
    assert (status, body) == (200, {"confirmed": True})
    assert sns_host.hits == [CERT_PATH, "/"]  # the certificate, then the SubscribeURL, once each
    assert await intake.events() == []


async def test_a_confirmation_to_another_host_makes_no_request(intake, sns_host, foreign_host, sns_key):
    status, body = await intake.post(confirmation(sns_host, sns_key, foreign_host.base))
    assert status == 403 and "SubscribeURL" in body["error"]
    assert foreign_host.hits == []
    assert "/" not in sns_host.hits


async def test_an_unsubscribe_confirmation_is_verified_and_only_logged(intake, sns_host, sns_key, forger_key):
    status, body = await intake.post(confirmation(sns_host, sns_key, sns_host.base, "UnsubscribeConfirmation"))
    assert (status, body) == (200, {"unsubscribed": True})
    assert sns_host.hits == [CERT_PATH]  # its SubscribeURL is never visited
    status, _ = await intake.post(confirmation(sns_host, forger_key, sns_host.base, "UnsubscribeConfirmation"))
    assert status == 403


# -- what SES says, recorded ------------------------------------------------------------------------
async def test_a_bounce_names_two_recipients_and_vouches_only_for_its_own(intake, sns_host, sns_key):
    await relayed(intake.store)
    ses = ses_bounce("Permanent", "General", [
        {"emailAddress": "gone@b.example", "action": "failed", "status": "5.1.1",
         "diagnosticCode": "smtp; 550 5.1.1 <gone@b.example>: Recipient address rejected: User unknown"},
        {"emailAddress": "stranger@c.example", "action": "failed", "status": "5.1.1",
         "diagnosticCode": "smtp; 550 5.1.1 user unknown"},
    ])
    status, body = await intake.post(notification(sns_host, ses, sns_key))
    assert (status, body) == (200, {"recorded": 2, "replay": False})
    events = {e.recipient: e for e in await intake.events()}
    gone, stranger = events["gone@b.example"], events["stranger@c.example"]
    assert (gone.source, gone.kind, gone.bounce_type, gone.reason, gone.correlation, gone.relay_id) == (
        Source.SES, Kind.BOUNCE, BounceType.HARD, "userunknown", Correlation.UPSTREAM_ID, "r1")
    assert (gone.status, gone.smtp_code, gone.remote_mta, gone.reporting_mta) == (
        "5.1.1", 550, "192.0.2.25", "a8-1.smtp-out.amazonses.com")
    assert "User unknown" in gone.diagnostic
    assert (stranger.correlation, stranger.relay_id) == (Correlation.FOREIGN_RECIPIENT, "r1")
    assert sorted(e.recipient for e in intake.handed) == ["gone@b.example", "stranger@c.example"]


async def test_a_complaint_found_by_its_message_id_header(intake, sns_host, sns_key):
    await relayed(intake.store)
    ses = {"notificationType": "Complaint", "mail": mail(message_id="not-ours-000000"), "complaint": {
        "complainedRecipients": [{"emailAddress": "gone@b.example"}], "timestamp": iso(time.time()),
        "feedbackId": "fb-complaint-1", "complaintFeedbackType": "abuse", "userAgent": "Yahoo!-Mail-Feedback/2.0"}}
    status, body = await intake.post(notification(sns_host, ses, sns_key))
    assert (status, body["recorded"]) == (200, 1)
    [event] = await intake.events()
    assert (event.kind, event.reason, event.feedback_type, event.correlation, event.relay_id, event.bounce_type) == (
        Kind.COMPLAINT, "feedback", "abuse", Correlation.MESSAGE_ID, "r1", BounceType.UNDETERMINED)


async def test_a_delivery_of_an_unknown_message_is_kept_uncorrelated(intake, sns_host, sns_key):
    ses = {"notificationType": "Delivery", "mail": mail(message_id="unknown-000000", header_id="<x@y>",
                                                       to=("a@b.example", "c@d.example")),
           "delivery": {"timestamp": iso(time.time()), "recipients": ["a@b.example", "c@d.example"],
                        "smtpResponse": "250 2.6.0 Message received", "reportingMTA": "a8-70.smtp-out.amazonses.com",
                        "remoteMtaIp": "192.0.2.80", "processingTimeMillis": 546}}
    status, body = await intake.post(notification(sns_host, ses, sns_key))
    assert (status, body["recorded"]) == (200, 2)
    events = await intake.events()
    assert sorted((e.recipient, e.kind, e.reason, e.correlation, e.relay_id, e.smtp_code) for e in events) == [
        ("a@b.example", Kind.DELIVERED, "delivered", Correlation.NONE, None, 250),
        ("c@d.example", Kind.DELIVERED, "delivered", Correlation.NONE, None, 250)]
    assert {e.remote_mta for e in events} == {"192.0.2.80"}


async def test_a_configuration_set_bounce_event(intake, sns_host, sns_key):
    """eventType instead of notificationType; no diagnostic: the bounceSubType says mailbox full."""
    await relayed(intake.store)
    ses = ses_bounce("Transient", "MailboxFull", [{"emailAddress": "gone@b.example"}], key="eventType")
    status, _ = await intake.post(notification(sns_host, ses, sns_key))
    [event] = await intake.events()
    assert (status, event.kind, event.reason, event.bounce_type, event.correlation) == (
        200, Kind.BOUNCE, "mailboxfull", BounceType.SOFT, Correlation.UPSTREAM_ID)


async def test_a_delay_is_recorded_and_an_open_is_acknowledged_and_ignored(intake, sns_host, sns_key):
    await relayed(intake.store)
    delay = {"eventType": "DeliveryDelay", "mail": mail(), "deliveryDelay": {
        "timestamp": iso(time.time()), "delayType": "MailboxFull", "expirationTime": iso(time.time() + 86400),
        "delayedRecipients": [{"emailAddress": "gone@b.example", "status": "4.2.2",
                               "diagnosticCode": "smtp; 452 4.2.2 Mailbox full"}]}}
    opened = {"eventType": "Open", "mail": mail(), "open": {"timestamp": iso(time.time()), "ipAddress": "192.0.2.1"}}
    assert (await intake.post(notification(sns_host, delay, sns_key)))[0] == 200
    assert await intake.post(notification(sns_host, opened, sns_key)) == (200, {"recorded": 0})
    assert await intake.post(notification(sns_host, "Successfully validated SNS topic for Amazon SES event "
                                          "publishing.", sns_key)) == (200, {"recorded": 0})
    [event] = await intake.events()
    assert (event.kind, event.reason, event.bounce_type, event.status) == (Kind.DELAY, "mailboxfull", BounceType.SOFT, "4.2.2")


# -- once -------------------------------------------------------------------------------------------
async def test_a_replay_adds_nothing(intake, sns_host, sns_key):
    doc = notification(sns_host, ses_bounce("Permanent", "NoEmail", [{"emailAddress": "gone@b.example"}]), sns_key)
    assert await intake.post(doc) == (200, {"recorded": 1, "replay": False})
    assert await intake.post(doc) == (200, {"recorded": 0, "replay": True})
    assert len(await intake.events()) == 1
    assert len(intake.handed) == 1


async def test_the_same_feedback_id_through_another_sns_message_adds_nothing(intake, sns_host, sns_key):
    """SES publishes one bounce to an identity's topic and to a configuration set's: one feedbackId."""
    first = ses_bounce("Permanent", "NoEmail", [{"emailAddress": "gone@b.example"}], feedback="fb-same")
    again = ses_bounce("Permanent", "NoEmail", [{"emailAddress": "gone@b.example"}], feedback="fb-same", key="eventType")
    assert (await intake.post(notification(sns_host, first, sns_key)))[1]["recorded"] == 1
    assert await intake.post(notification(sns_host, again, sns_key)) == (200, {"recorded": 0, "replay": True})
    assert len(await intake.events()) == 1


# -- not SNS's: refused, nothing recorded -----------------------------------------------------------
BOUNCE = ses_bounce("Permanent", "NoEmail", [{"emailAddress": "gone@b.example"}])


async def test_a_forged_signature_is_refused(intake, sns_host, sns_key, forger_key):
    status, body = await intake.post(notification(sns_host, BOUNCE, forger_key))
    assert (status, body) == (403, {"error": "the signature does not verify"})
    tampered = notification(sns_host, BOUNCE, sns_key)
    tampered["Message"] = tampered["Message"].replace("gone@b.example", "victim@b.example")
    assert (await intake.post(tampered))[0] == 403
    assert await intake.events() == [] and intake.handed == []


async def test_an_unknown_topic_is_refused_before_any_fetch(intake, sns_host, sns_key):
    other = "arn:aws:sns:us-east-1:999999999999:someone-elses"
    status, body = await intake.post(notification(sns_host, BOUNCE, sns_key, topic=other))
    assert status == 403 and "TopicArn" in body["error"]
    assert sns_host.hits == [] and await intake.events() == []


@pytest.mark.parametrize("age", [7200, -7200])
async def test_a_stale_or_future_timestamp_is_refused(intake, sns_host, sns_key, age):
    status, body = await intake.post(notification(sns_host, BOUNCE, sns_key, at=time.time() - age))
    assert status == 403 and "Timestamp" in body["error"]
    assert sns_host.hits == [] and await intake.events() == []


async def test_a_certificate_url_off_the_pattern_is_never_fetched(intake, sns_host, foreign_host, forger_key):
    doc = notification(sns_host, BOUNCE, forger_key, cert_url=foreign_host.base + CERT_PATH)
    status, body = await intake.post(doc)
    assert status == 403 and "SigningCertURL" in body["error"]
    assert foreign_host.hits == [] and await intake.events() == []


@pytest.mark.parametrize("version", ["1", "2"])
async def test_signature_versions_1_and_2(intake, sns_host, sns_key, version):
    doc = notification(sns_host, BOUNCE, sns_key, version=version, subject="Amazon SES Email Event Notification")
    assert (await intake.post(doc))[0] == 200
    liar = notification(sns_host, BOUNCE, sns_key, version=version)
    liar["SignatureVersion"] = {"1": "2", "2": "1"}[version]  # the other hash: no longer verifies
    assert (await intake.post(liar))[0] == 403
    assert len(await intake.events()) == 1


async def test_the_certificate_is_fetched_once_for_many_messages(intake, sns_host, sns_key):
    for _ in range(3):
        doc = notification(sns_host, ses_bounce("Transient", "General", [{"emailAddress": "a@b.example"}]), sns_key)
        assert (await intake.post(doc))[0] == 200
    assert sns_host.hits == [CERT_PATH]


async def test_bodies_that_are_not_sns_messages_get_a_clear_answer(intake, sns_host, sns_key):
    assert await intake.post(b"{not json") == (400, {"error": "the body is not JSON"})
    assert await intake.post(b"\xff\xfe") == (400, {"error": "the body is not JSON"})
    assert (await intake.post([1, 2]))[0] == 400
    assert (await intake.post({"Type": "Surprise"}))[0] == 400
    doc = notification(sns_host, BOUNCE, sns_key)
    del doc["Signature"]
    assert await intake.post(doc) == (403, {"error": "Signature is missing"})
    doc = notification(sns_host, BOUNCE, sns_key)
    assert (await intake.post(doc, {"x-amz-sns-message-type": "SubscriptionConfirmation"}))[0] == 400
    assert (await intake.post(b"{" * 100_000 + b"}" * 100_000))[0] == 400
    assert (await intake.post(b" " * (1024 * 1024 + 1)))[0] == 413
    assert sns_host.hits == [] and await intake.events() == []


async def test_basic_auth_when_configured(any_store, sns_host, sns_key, monkeypatch):
    monkeypatch.setenv("TEST_SNS_AUTH", "sns:s3cret")
    server = await Intake(sns_config(sns_host, basic_auth_env="TEST_SNS_AUTH"), any_store).start()
    try:
        doc = notification(sns_host, BOUNCE, sns_key)
        status, body = await server.post(doc)
        assert status == 401 and "basic auth" in body["error"]
        wrong = base64.b64encode(b"sns:guess").decode()
        assert (await server.post(doc, {"Authorization": f"Basic {wrong}"}))[0] == 401
        right = base64.b64encode(b"sns:s3cret").decode()
        assert (await server.post(doc, {"Authorization": f"Basic {right}"}))[0] == 200
    finally:
        await server.runner.cleanup()


# -- the mapping, pure -------------------------------------------------------------------------------
def events_of(ses: dict):
    return read_notice(json.dumps(ses), time.time()).events


@pytest.mark.parametrize("bounce_type, subtype, recipient, expected", [
    # a Permanent bounce whose diagnostic blames the sender never makes the address hard
    ("Permanent", "General", {"status": "5.7.1", "diagnosticCode": "smtp; 554 5.7.1 Client host [192.0.2.1] blocked "
                              "using zen.spamhaus.org"}, ("blocked", BounceType.SOFT)),
    ("Permanent", "NoEmail", {}, ("userunknown", BounceType.HARD)),
    ("Permanent", "Suppressed", {"diagnosticCode": "Amazon SES has suppressed sending to this address because it has "
                                 "a recent history of bouncing as an invalid address."}, ("suppressed", BounceType.SOFT)),
    ("Permanent", "OnAccountSuppressionList", {}, ("suppressed", BounceType.SOFT)),
    ("Transient", "General", {"status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1 user unknown"},
     ("userunknown", BounceType.SOFT)),
    ("Transient", "MessageTooLarge", {}, ("emailtoolarge", BounceType.SOFT)),
    ("Transient", "ContentRejected", {}, ("contenterror", BounceType.SOFT)),
    ("Transient", "AttachmentRejected", {}, ("virusdetected", BounceType.SOFT)),
    ("Undetermined", "Undetermined", {}, ("undefined", BounceType.UNDETERMINED)),
])
def test_bounce_types_and_subtypes(bounce_type, subtype, recipient, expected):
    [event] = events_of(ses_bounce(bounce_type, subtype, [{"emailAddress": "Gone@B.example", **recipient}]))
    assert (event.reason, event.bounce_type, event.recipient) == (*expected, "gone@b.example")


def test_hostile_ses_json_is_read_as_far_as_it_makes_sense():
    assert read_notice("[1]", 0) is None and read_notice("{}", 0) is None and read_notice("plain text", 0) is None
    notice = read_notice(json.dumps({"notificationType": "Bounce", "mail": [], "bounce": {
        "bouncedRecipients": [None, {"emailAddress": 7}, {"emailAddress": "no-at-sign"}, {"emailAddress": "ok@b.example"}],
        "feedbackId": ["x"]}}), 5.0)
    assert [e.recipient for e in notice.events] == ["ok@b.example"]
    assert (notice.upstream_id, notice.feedback_ids, notice.events[0].at) == (None, [], 5.0)
    reject = read_notice(json.dumps({"eventType": "Reject", "mail": mail(to=("a@b.example",)),
                                     "reject": {"reason": "Bad content"}}), 0)
    assert [(e.kind, e.reason, e.bounce_type) for e in reject.events] == [(Kind.BOUNCE, "virusdetected", BounceType.SOFT)]
    assert read_notice(json.dumps({"eventType": "Send", "mail": mail(), "send": {}}), 0).events == []


# -- configuration -----------------------------------------------------------------------------------
def test_sns_config_is_validated_with_key_and_file(tmp_path):
    path = tmp_path / "c.toml"
    for text, says in [
        ("[sns]\nenabled = true\n", "[sns] topic_arns must name at least one topic"),
        ('[sns]\ntopic_arns = ["not-an-arn"]\n', "[sns] topic_arns: 'not-an-arn'"),
        ("[sns]\ncert_url_pattern = '(unclosed'\n", "[sns] cert_url_pattern is not a regular expression"),
        ('[sns]\npath = "sns"\n', "[sns] path must start with /"),
        ("[sns]\nmax_age_seconds = 0\n", "[sns] max_age_seconds must be more than 0"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError) as err:
            load_config(path, env={})
        assert says in str(err.value) and str(path) in str(err.value)
    path.write_text(f'[sns]\nenabled = true\ntopic_arns = ["{TOPIC}"]\n')
    assert load_config(path, env={}).sns.topic_arns == (TOPIC,)
    assert sns_routes(load_config(None, env={}), store=None) == []  # disabled: nothing mounted


async def test_a_named_but_unset_basic_auth_variable_refuses_to_start(sns_host, monkeypatch):
    monkeypatch.delenv("TEST_SNS_UNSET", raising=False)
    with pytest.raises(ConfigError, match=r"\[sns\] basic_auth_env names TEST_SNS_UNSET"):
        sns_routes(sns_config(sns_host, basic_auth_env="TEST_SNS_UNSET"), store=None)


async def test_the_api_mounts_the_intake_beyond_loopback_without_a_bearer_token(any_store, sns_host, sns_key,
                                                                                 monkeypatch):
    """The API as the service builds it, configured beyond loopback (so every other path needs the token):
    SNS, which cannot send one, still reaches the intake, whose own checks guard it."""
    from proxy.api.server import create_api
    from proxy.config import Address, ApiConfig

    monkeypatch.setenv("BOUNCEPROXY_API_TOKEN", "t" * 32)
    config = dataclasses.replace(sns_config(sns_host), api=ApiConfig(listen=Address("192.0.2.10", 8025)))
    handed: list = []
    app = create_api(config, any_store, on_events=handed.extend)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()  # built for 192.0.2.10, tried on loopback
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        await relayed(any_store)
        ses = ses_bounce("Permanent", "General", [{"emailAddress": "gone@b.example", "status": "5.1.1",
                                                   "diagnosticCode": "smtp; 550 5.1.1 user unknown"}])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/api/bounces") as response:
                assert response.status == 401
            async with session.post(f"{base}/sns/ses", data=json.dumps(notification(sns_host, ses, sns_key))) as response:
                assert (response.status, await response.json()) == (200, {"recorded": 1, "replay": False})
            forged = notification(sns_host, ses, sns_key)
            forged["Message"] = forged["Message"].replace("gone@", "victim@")
            async with session.post(f"{base}/sns/ses", data=json.dumps(forged)) as response:
                assert response.status == 403
        assert [e.recipient for e in handed] == ["gone@b.example"]
    finally:
        await runner.cleanup()

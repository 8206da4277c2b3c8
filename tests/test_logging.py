"""The log of a real running service: one greppable line per message and per inbound mail, AUTH
failures with the peer, JSON that parses, and never a body, a command line or SQL, even at -v."""
from __future__ import annotations

import json
import re
import smtplib

from tests.daemon import Daemon

SECRET = "Zq7-the-body-must-never-be-logged"


def send(port: int, rcpts: list[str], body: str = f"Subject: hello\r\n\r\n{SECRET}\r\n") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("app@example.com")
        accepted = [rcpt for rcpt in rcpts if smtp.rcpt(rcpt)[0] == 250]
        if accepted:
            smtp.data(body.encode())


def fields(line: str) -> dict[str, str]:
    """key=value pairs of a text line, double-quoted values unescaped."""
    found = {}
    for key, bare, quoted in re.findall(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|(\S*))', line.split(": ", 1)[1]):
        found[key] = bare if bare or not quoted else quoted
        if quoted:
            found[key] = quoted
    return found


def test_one_line_per_message_and_inbound_mail_no_body_at_debug(tmp_path):
    users = {"BOUNCEPROXY_RELAY_USERS": "app:right-password"}
    with Daemon(tmp_path, '[upstream]\nsimulator_async_delay = 0.1\n[inbound]\nsettle_seconds = 0.1\n',
                args=("-v",), env=users) as daemon:
        send(daemon.relay_port, ["success@simulator.amazonses.com"])
        send(daemon.relay_port, ["bounce@simulator.amazonses.com"])
        send(daemon.relay_port, ["ooto@simulator.amazonses.com"])
        with smtplib.SMTP("127.0.0.1", daemon.relay_port, timeout=10) as smtp:
            smtp.ehlo()
            try:
                smtp.login("app", "wrong-password")
            except smtplib.SMTPAuthenticationError as exc:
                assert exc.smtp_code == 535
            smtp.login("app", "right-password")
        daemon.wait_for("bounceproxy.inbound:")
        daemon.wait_for("bounceproxy.message:", count=3)
    log = daemon.text()
    messages = [fields(line) for line in daemon.find("bounceproxy.message:")]
    by_to = {m["to"]: m for m in messages}
    sent = by_to["<success@simulator.amazonses.com>"]
    assert sent["status"] == "sent" and sent["from"] == "<app@example.com>" and sent["relay"] == "simulator"
    assert sent["reply"].startswith("250 Ok ") and re.fullmatch(r"\d+\.\d\d", sent["delay"]) and sent["id"]
    bounced = by_to["<bounce@simulator.amazonses.com>"]
    assert bounced["status"] == "bounced" and bounced["message_status"] == "rejected"
    (inbound,) = [fields(line) for line in daemon.find("bounceproxy.inbound:")]
    assert inbound["from"] == "<>" and inbound["kind"] == "autoreply" and inbound["recipients"] == "1"
    assert inbound["correlation"] == "verp" and inbound["message"] == by_to["<ooto@simulator.amazonses.com>"]["id"]
    auth = daemon.find("auth_failed")[0]  # smtplib tries PLAIN, then LOGIN: one line per refused attempt
    assert "peer=127.0.0.1" in auth and "user=app" in auth and "wrong password" in auth
    assert "wrong-password" not in log and "right-password" not in log
    # At debug: bounceproxy's own detail, but no body text, no SMTP command lines, no SQL.
    assert SECRET not in log and "Subject: hello" not in log
    assert "MAIL FROM" not in log.upper().replace("MAIL FROM=", "") and "INSERT INTO" not in log.upper()
    assert "SELECT " not in log.upper() and "login_data is deprecated" not in log


def test_json_lines_parse_and_carry_the_fields(tmp_path):
    with Daemon(tmp_path, '[log]\nformat = "json"\n') as daemon:
        send(daemon.relay_port, ["success@simulator.amazonses.com", "bounce@simulator.amazonses.com"])
        daemon.wait_for('"bounceproxy.message"')
    records = [json.loads(line) for line in daemon.log if line.strip()]  # every line is one JSON object
    (message,) = [r for r in records if r["logger"] == "bounceproxy.message"]
    assert message["level"] == "info" and message["status"] == "sent" and message["message_status"] == "partial"
    assert message["refused"] == "<bounce@simulator.amazonses.com>" and message["from"] == "<app@example.com>"
    assert message["message"].startswith("id=") and message["time"].endswith("Z")
    assert any("NOTHING IS DELIVERED" in r["message"] and r["level"] == "warning" for r in records)


def test_a_config_mistake_in_the_log_section_names_the_key(tmp_path):
    import pytest

    from proxy.config import ConfigError, load_config

    (tmp_path / "c.toml").write_text('[log]\nformat = "xml"\n')
    with pytest.raises(ConfigError, match=r"c.toml: \[log\] format: 'xml' is not one of json, text"):
        load_config(tmp_path / "c.toml", env={})

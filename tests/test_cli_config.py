"""The command line and the configuration, run as a user runs them: the real `bounceproxy` binary."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proxy.config import ConfigError, load_config
from tests.conftest import ROOT

BOUNCEPROXY = [sys.executable, "-m", "proxy"]


def run(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BOUNCEPROXY_")}
    full_env["PYTHONPATH"] = str(ROOT)
    full_env.update(env or {})
    return subprocess.run([*BOUNCEPROXY, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_shipped_config_toml_is_valid_and_equals_the_defaults():
    """config.toml documents the defaults: loading it must give exactly the built-in config."""
    import dataclasses

    shipped = load_config(ROOT / "config.toml", env={})
    defaults = load_config(None, env={})
    # The file's relative store path resolves next to it; every other value is the default.
    assert shipped.store.path == str(ROOT / defaults.store.path)
    defaults = dataclasses.replace(defaults, store=dataclasses.replace(defaults.store, path=shipped.store.path))
    for section in ("relay", "upstream", "inbound", "store", "api", "preflight", "suppression", "log", "service"):
        assert getattr(shipped, section) == getattr(defaults, section), section


@pytest.mark.parametrize("text, key", [
    ("[relay]\nlisten = 2525\n", "[relay] listen"),
    ("[relay]\nlisten = \"localhost\"\n", "[relay] listen"),
    ("[relay]\nlisen = \"127.0.0.1:25\"\n", "[relay] lisen"),
    ("[upstream]\npool_size = \"many\"\n", "[upstream] pool_size"),
    ("[upstream]\nprofile = \"ses\"\n", "[upstream] host"),
    ("[upstream]\ntls = \"sometimes\"\n", "[upstream] tls"),
    ("[relay]\nbusy_poll_us = 20000\n", "[relay] busy_poll_us"),
    ("[relay]\nbusy_poll_us = -1\n", "[relay] busy_poll_us"),
    ("[relays]\n", "[relays]"),
    ("[relay\n", "not valid TOML"),
])
def test_config_mistakes_name_the_key_and_the_file(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = run("serve", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert str(path) in line and key in line


def test_unreadable_config_file(tmp_path):
    result = run("serve", "-c", str(tmp_path / "missing.toml"), cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "missing.toml" in line and "cannot read" in line


def test_environment_overrides_and_its_mistakes(tmp_path):
    config = load_config(None, env={"BOUNCEPROXY_RELAY__LISTEN": "127.0.0.2:2600",
                                    "BOUNCEPROXY_UPSTREAM__POOL_SIZE": "3",
                                    "BOUNCEPROXY_INBOUND__BOUNCE_DOMAINS": "b.example.com, c.example.com",
                                    "BOUNCEPROXY_UPSTREAM__VERIFY_TLS": "false"})
    assert (config.relay.listen.host, config.relay.listen.port) == ("127.0.0.2", 2600)
    assert config.upstream.pool_size == 3 and config.upstream.verify_tls is False
    assert config.inbound.bounce_domains == ("b.example.com", "c.example.com")
    with pytest.raises(ConfigError, match="BOUNCEPROXY_UPSTREAM__POOL_SIZE"):
        load_config(None, env={"BOUNCEPROXY_UPSTREAM__POOL_SIZE": "lots"})
    with pytest.raises(ConfigError, match="BOUNCEPROXY_RELAY__NOPE names no config key"):
        load_config(None, env={"BOUNCEPROXY_RELAY__NOPE": "1"})
    result = run("serve", cwd=tmp_path, env={"BOUNCEPROXY_RELAY__LISTEN": "not-an-address"})
    assert result.returncode == 2 and "BOUNCEPROXY_RELAY__LISTEN" in one_line_error(result)


def test_unknown_command_and_option_are_one_line_and_exit_2(tmp_path):
    for args in (["frobnicate"], ["bounces", "--colour"], ["bounces", "--since", "yesterday-ish"],
                 ["bounces", "--type", "medium"]):
        result = run(*args, cwd=tmp_path)
        assert result.returncode == 2, args
        assert one_line_error(result).startswith("bounceproxy: error:")


def test_query_without_a_store_is_a_clear_error(tmp_path):
    result = run("bounces", cwd=tmp_path)
    assert result.returncode == 1
    assert "no bounce log at bounceproxy.db" in one_line_error(result)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_then_query_with_every_output_format(tmp_path):
    """The README's first command in miniature: serve on defaults (simulator), send, query."""
    import smtplib

    port = _free_port()
    env = {"BOUNCEPROXY_RELAY__LISTEN": f"127.0.0.1:{port}", "BOUNCEPROXY_INBOUND__LISTEN": f"127.0.0.1:{_free_port()}",
           "BOUNCEPROXY_API__LISTEN": f"127.0.0.1:{_free_port()}"}
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BOUNCEPROXY_")}
    full_env.update(env, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([*BOUNCEPROXY, "serve"], cwd=tmp_path, env=full_env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 20
        while True:
            try:
                smtp = smtplib.SMTP("127.0.0.1", port, timeout=10)
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, f"serve did not start: {proc.stderr.read() if proc.poll() is not None else ''}"
                time.sleep(0.1)
        with smtp:
            smtp.ehlo()
            smtp.mail("app@example.com")
            assert smtp.rcpt("bounce@simulator.amazonses.com")[0] == 550
            assert smtp.rcpt("someone@example.org")[0] == 250
            assert smtp.data(b"Subject: t\r\n\r\nhi\r\n")[0] == 250
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "simulator" in err and "NOTHING IS DELIVERED" in err  # nobody mistakes it for delivery
    assert proc.returncode in (0, -15)

    table = run("bounces", "--since", "1h", cwd=tmp_path)
    assert table.returncode == 0 and "bounce@simulator.amazonses.com" in table.stdout and "userunknown" in table.stdout
    lines = run("bounces", "--json", "--type", "hard", cwd=tmp_path).stdout.splitlines()
    (event,) = [json.loads(line) for line in lines]
    assert event["recipient"] == "bounce@simulator.amazonses.com" and event["source"] == "sync"
    assert run("bounces", "--json", "--type", "soft", cwd=tmp_path).stdout == ""
    csv_out = run("bounces", "--csv", "--recipient", "BOUNCE@simulator.amazonses.com", cwd=tmp_path).stdout.splitlines()
    assert csv_out[0].startswith("id,at,source,kind,recipient") and len(csv_out) == 2
    messages = [json.loads(line) for line in run("messages", "--json", cwd=tmp_path).stdout.splitlines()]
    assert len(messages) == 1 and messages[0]["status"] == "partial"
    assert event["relay_id"] == messages[0]["id"]  # one name per id: the relay's id of the event's message
    assert "message_id" not in event and messages[0]["message_id"]  # a message's message_id is its header
    by_message = run("bounces", "--json", "--message", messages[0]["id"], cwd=tmp_path).stdout.splitlines()
    assert [json.loads(line)["id"] for line in by_message] == [event["id"]]
    assert run("bounces", "--json", "--message", "no-such-id", cwd=tmp_path).stdout == ""
    story = run("messages", "show", messages[0]["id"], cwd=tmp_path).stdout
    shown = json.loads(run("messages", "show", messages[0]["id"], "--json", cwd=tmp_path).stdout)
    assert shown["id"] == messages[0]["id"] and [e["relay_id"] for e in shown["events"]] == [messages[0]["id"]]
    assert "bounce@simulator.amazonses.com" in story and "rejected" in story and "someone@example.org" in story
    stats = json.loads(run("stats", "--json", cwd=tmp_path).stdout)
    assert stats["messages"] == 1 and stats["recipients"] == 2 and stats["hard_bounces"] == 1
    assert stats["bounce_rate"] == 0.5


def test_serve_with_two_relay_workers_sharing_the_port(tmp_path):
    import smtplib
    import signal

    port = _free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BOUNCEPROXY_")}
    full_env.update(PYTHONPATH=str(ROOT), BOUNCEPROXY_RELAY__LISTEN=f"127.0.0.1:{port}", BOUNCEPROXY_RELAY__WORKERS="2",
                    BOUNCEPROXY_INBOUND__LISTEN=f"127.0.0.1:{_free_port()}", BOUNCEPROXY_API__ENABLED="false")
    proc = subprocess.Popen([*BOUNCEPROXY, "serve"], cwd=tmp_path, env=full_env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 20
        while True:
            try:
                smtplib.SMTP("127.0.0.1", port, timeout=5).quit()
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, f"serve did not start: {proc.poll() is not None and proc.stderr.read()}"
                time.sleep(0.1)
        time.sleep(0.5)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1  # one forked relay worker beside the main process
        for n in range(20):
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                smtp.sendmail("app@example.com", [f"user{n}@example.org"], b"Subject: w\r\n\r\nhi\r\n")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "relay worker 0 listening" in err and "relay worker 1 listening" in err
    assert proc.returncode == 0
    assert not Path(f"/proc/{children[0]}").exists()  # the worker went down with the main process
    messages = [json.loads(line) for line in run("messages", "--json", "--limit", "100", cwd=tmp_path).stdout.splitlines()]
    assert len(messages) == 20 and {m["status"] for m in messages} == {"sent"}


def test_parse_many_files_in_parallel_keeps_their_order(tmp_path):
    import shutil as sh

    originals = sorted((ROOT / "tests" / "data").glob("*.eml"))
    names = []
    for n in range(140):  # enough for one worker per core
        src = originals[n % len(originals)]
        dst = tmp_path / f"{n:03d}-{src.name}"
        sh.copy(src, dst)
        names.append(dst.name)
    alone = {}
    for src in originals:  # each distinct mail parsed on its own, serially
        one = run("parse", "--json", str(src), cwd=tmp_path)
        assert one.returncode == 0
        alone[src.name] = [json.loads(line) for line in one.stdout.splitlines()]
    expected = [json.dumps({**row, "file": name}, ensure_ascii=False)
                for name in names for row in alone[name.split("-", 1)[1]]]
    together = run("parse", "--json", *names, cwd=tmp_path)
    assert together.returncode == 0 and together.stdout.splitlines() == expected
    assert [json.loads(line)["file"] for line in expected][:3] == names[:3]

"""`bounceproxy selftest` against a real running service on its own config."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.daemon import Daemon

FAST = '[upstream]\nsimulator_async_delay = 0.2\n[inbound]\nsettle_seconds = 0.2\n'


def selftest(daemon: Daemon, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**daemon.env, **(env or {})}
    return subprocess.run([sys.executable, "-m", "proxy", "selftest", "-c", str(daemon.config), *args],
                          env=environment, capture_output=True, text=True, cwd="/", timeout=120)


def test_selftest_passes_on_the_default_simulator_config(tmp_path):
    with Daemon(tmp_path, FAST) as daemon:
        result = selftest(daemon, "--timeout", "20")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "built-in SES mailbox simulator" in lines[0]
    steps = {re.split(r" \(|:", line[7:], maxsplit=1)[0]: line for line in lines if line.startswith("[")}
    assert list(steps) == ["bounce MX", "success", "bounce", "ooto", "complaint", "suppressionlist", "late bounce"]
    assert all(line.startswith("[pass]") for line in steps.values())
    assert "sync bounce hard/userunknown" in steps["bounce"] and "async autoreply" in steps["ooto"]
    assert "async complaint" in steps["complaint"] and "reason suppressed" not in steps["success"]
    assert "async bounce hard" in steps["late bounce"] and "via verp" in steps["late bounce"]
    assert lines[-1].endswith("7 of 7 steps as SES would do")
    # What it sent is in the log like any other mail, one line per message.
    assert len(daemon.find("bounceproxy.message:")) == 6


def test_selftest_fails_naming_the_step_when_the_bounce_mx_is_off(tmp_path):
    with Daemon(tmp_path, FAST, env={"BOUNCEPROXY_INBOUND__ENABLED": "false"}) as daemon:
        result = selftest(daemon, "--timeout", "3", env={"BOUNCEPROXY_INBOUND__ENABLED": "true"})
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("[FAIL]")]
    names = [line[7:].split(" (")[0].split(":")[0] for line in failed]
    assert names == ["bounce MX", "ooto", "complaint", "late bounce"], result.stdout
    assert "nothing answers on" in failed[0]
    assert all("no " in line and "came back to the bounce MX" in line for line in failed[1:])
    assert "[pass] success" in result.stdout and "[pass] bounce (" in result.stdout
    assert "4 wrong" in result.stdout.splitlines()[-1]


def test_selftest_against_a_real_upstream_needs_a_sender(tmp_path):
    (tmp_path / "c.toml").write_text('[upstream]\nprofile = "ses"\nhost = "email-smtp.eu-west-1.amazonaws.com"\n')
    daemon = Daemon(tmp_path)
    result = subprocess.run([sys.executable, "-m", "proxy", "selftest", "-c", str(tmp_path / "c.toml")],
                            env=daemon.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--from is required with a real upstream" in result.stderr

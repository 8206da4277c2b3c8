"""Running it as a daemon: relative paths, the bare command, and packaging files."""
from __future__ import annotations

import os
import subprocess
import sys

from proxy.config import load_config
from tests.conftest import ROOT


def run(*args: str, cwd, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BOUNCEPROXY_")}
    full_env.update({"PYTHONPATH": str(ROOT), **(env or {})})
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=60)


def test_relative_paths_resolve_against_the_config_files_directory(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    config = etc / "config.toml"
    config.write_text('[store]\npath = "data/bounce.db"\n[relay]\ntls_cert = "cert.pem"\ntls_key = "/abs/key.pem"\n')
    (etc / "data").mkdir()
    loaded = load_config(config, env={})
    assert loaded.store.path == str(etc / "data" / "bounce.db")
    assert loaded.relay.tls_cert == str(etc / "cert.pem") and loaded.relay.tls_key == "/abs/key.pem"
    # The environment is the shell's: relative to the working directory, as typed.
    assert load_config(config, env={"BOUNCEPROXY_STORE__PATH": "x.db"}).store.path == "x.db"
    # A default file name lands beside the config file too.
    (etc / "other.toml").write_text("")
    assert load_config(etc / "other.toml", env={}).store.path == str(etc / "bounceproxy.db")

    # As an operator does it: write from one directory, read from `/`.
    added = run("suppressions", "add", "gone@example.com", "-c", str(config), cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    assert (etc / "data" / "bounce.db").exists()
    listed = run("suppressions", "list", "--json", "-c", str(config), cwd="/")
    assert listed.returncode == 0, listed.stderr
    assert '"gone@example.com"' in listed.stdout
    messages = run("messages", "-c", str(config), cwd="/")
    assert messages.returncode == 0 and "no bounce log" not in messages.stderr


def test_bare_command_prints_the_help(tmp_path):
    result = run(cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("Usage: bounceproxy") and "serve" in result.stdout and "selftest" in result.stdout


def test_license_and_systemd_unit_are_shipped():
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    unit = (ROOT / "contrib" / "bounceproxy.service").read_text()
    for line in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes", "StateDirectory=bounceproxy",
                 "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in unit.splitlines(), line


def dockerfile_env() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("ENV "))
    return dict(item.split("=", 1) for item in line[4:].split())


def test_docker_image_exposes_the_api_and_refuses_it_without_a_token():
    import pytest

    from proxy.api import api_token
    from proxy.config import ConfigError

    text = (ROOT / "Dockerfile").read_text()
    exposed = next(line for line in text.splitlines() if line.startswith("EXPOSE")).split()[1:]
    assert sorted(exposed) == ["2525", "2526", "8025"]
    env = {k: v for k, v in dockerfile_env().items() if k.startswith("BOUNCEPROXY_")}
    config = load_config(ROOT / "config.toml", env=env)
    assert str(config.api.listen) == "0.0.0.0:8025" and config.api.listen.port == int(exposed[2])
    assert config.service.shutdown_grace < 10  # inside `docker stop`'s default timeout
    with pytest.raises(ConfigError, match="BOUNCEPROXY_API_TOKEN"):
        api_token(config)  # beyond loopback: no API without a token
    # The README's container example publishes the relay on the host's loopback only.
    readme = (ROOT / "README.md").read_text()
    docker = readme[readme.index("## Docker"):]
    example = docker[:docker.index("```\n", docker.index("```sh") + 5)]
    assert "-p 127.0.0.1:2525:2525" in example and "-p 2525:2525" not in example
    assert "172.16.0.0/12" not in example

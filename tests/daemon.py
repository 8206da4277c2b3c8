"""`bounceproxy serve` as an operator runs it: a real process on free loopback ports, its log collected."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """The service in its own process; `log` holds every stderr line it wrote so far."""

    def __init__(self, tmp_path: Path, config: str = "", args: tuple[str, ...] = (), env: dict | None = None,
                 api: bool = True):
        self.dir = tmp_path
        self.relay_port, self.inbound_port, self.api_port = free_port(), free_port(), free_port()
        self.config = tmp_path / "config.toml"
        self.config.write_text(config)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BOUNCEPROXY_")}
        self.env.update(PYTHONPATH=str(ROOT), BOUNCEPROXY_RELAY__LISTEN=f"127.0.0.1:{self.relay_port}",
                        BOUNCEPROXY_INBOUND__LISTEN=f"127.0.0.1:{self.inbound_port}",
                        BOUNCEPROXY_API__LISTEN=f"127.0.0.1:{self.api_port}",
                        BOUNCEPROXY_API__ENABLED="true" if api else "false", **(env or {}))
        self.args = args
        self.log: list[str] = []
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Daemon":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 20) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "-c", str(self.config), *self.args],
                                     cwd=self.dir, env=self.env, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.time() + timeout
        # the relay's line ("relay listening on ..." or "relay worker 0 listening on ...") names its port
        ready = "API and dashboard on" if self.env["BOUNCEPROXY_API__ENABLED"] == "true" else f":{self.relay_port} -> upstream"
        while not self.find(ready):
            assert self.proc.poll() is None, "serve exited:\n" + self.text()
            assert time.time() < deadline, "serve did not start:\n" + self.text()
            time.sleep(0.05)

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.log)

    def find(self, needle: str) -> list[str]:
        return [line for line in list(self.log) if needle in line]

    def wait_for(self, needle: str, timeout: float = 15, count: int = 1) -> list[str]:
        deadline = time.time() + timeout
        while len(self.find(needle)) < count:
            assert time.time() < deadline, f"no {needle!r} in the log:\n" + self.text()
            time.sleep(0.05)
        return self.find(needle)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        time.sleep(0.1)  # the reader thread takes the last lines
        return code

"""Signals on a real running service: SIGHUP reloads in place (a transfer in flight goes on, the next
STARTTLS presents the new certificate); SIGTERM answers idle sessions 421 4.3.2, lets a slow transfer
finish inside [service] shutdown_grace and exits cleanly."""
from __future__ import annotations

import signal
import smtplib
import socket
import ssl
import time

import pytest

from tests.daemon import Daemon


def peer_names(port: int, ca) -> list[str]:
    """The DNS names of the certificate the relay presents at STARTTLS."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.starttls(context=ctx)
        cert = smtp.sock.getpeercert()
    return [value for kind, value in cert["subjectAltName"] if kind == "DNS"]


class Transfer:
    def __init__(self, sock: socket.socket):
        self.sock, self.f = sock, sock.makefile("rb")

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def open_transfer(port: int) -> Transfer:
    """A client in the middle of DATA: envelope given, half the body sent."""
    sock = Transfer(socket.create_connection(("127.0.0.1", port), timeout=15))
    f = sock.f
    assert f.readline().startswith(b"220")
    sock.sendall(b"EHLO client.test\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    for command, code in ((b"MAIL FROM:<app@example.com>", b"250"), (b"RCPT TO:<success@simulator.amazonses.com>", b"250"),
                          (b"DATA", b"354")):
        sock.sendall(command + b"\r\n")
        assert f.readline().startswith(code)
    sock.sendall(b"Subject: slow\r\n\r\nthe first half\r\n")
    return sock


def finish_transfer(sock: Transfer) -> bytes:
    sock.sendall(b"the second half\r\n.\r\n")
    return sock.f.readline()


def test_sighup_keeps_a_transfer_and_swaps_the_certificate(tmp_path, ca):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    first = ca.issue_cert("first.relay.test", "127.0.0.1")
    first.private_key_and_cert_chain_pem.write_to_path(str(cert))
    first.private_key_pem.write_to_path(str(key))
    with Daemon(tmp_path, '[relay]\ntls_cert = "cert.pem"\ntls_key = "key.pem"\n') as daemon:  # relative: beside it
        assert "first.relay.test" in peer_names(daemon.relay_port, ca)
        transfer = open_transfer(daemon.relay_port)
        renewed = ca.issue_cert("renewed.relay.test", "127.0.0.1")
        renewed.private_key_and_cert_chain_pem.write_to_path(str(cert))
        renewed.private_key_pem.write_to_path(str(key))
        daemon.signal(signal.SIGHUP)
        (line,) = daemon.wait_for("reloaded ")
        assert "TLS certificate" in line
        assert finish_transfer(transfer).startswith(b"250 ")  # the session in flight went on
        transfer.close()
        names = peer_names(daemon.relay_port, ca)
        assert "renewed.relay.test" in names and "first.relay.test" not in names
        assert daemon.proc.poll() is None  # still serving
        # A broken certificate on reload is refused; the running one stays.
        cert.write_text("not a certificate")
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("reload refused")
        assert "renewed.relay.test" in peer_names(daemon.relay_port, ca)
        (message,) = daemon.wait_for("status=sent")
        assert "to=<success@simulator.amazonses.com>" in message
    assert daemon.proc.returncode == 0


def test_sighup_applies_the_log_level_and_names_what_needs_a_restart(tmp_path):
    with Daemon(tmp_path, "") as daemon:
        daemon.config.write_text('[log]\nlevel = "warning"\n[suppression]\nmode = "observe"\n'
                                 '[inbound]\nmax_connections = 7\n')
        daemon.signal(signal.SIGHUP)
        (line,) = daemon.wait_for("reloaded ")
        assert "[log] level" in line and "[suppression] mode" in line
        assert "needs a restart to change: [inbound] max_connections" in line
        with smtplib.SMTP("127.0.0.1", daemon.relay_port, timeout=10) as smtp:
            smtp.sendmail("app@example.com", ["success@simulator.amazonses.com"], b"Subject: x\r\n\r\nx\r\n")
        time.sleep(0.5)
    assert not daemon.find("status=sent")  # info lines are off at level warning


def test_sigterm_421_to_idle_sessions_and_a_slow_transfer_finishes(tmp_path):
    with Daemon(tmp_path, '[service]\nshutdown_grace = 20.0\n') as daemon:
        idle = smtplib.SMTP("127.0.0.1", daemon.relay_port, timeout=10)
        idle.ehlo()
        transfer = open_transfer(daemon.relay_port)
        daemon.signal(signal.SIGTERM)
        code, text = idle.getreply()  # told, not cut: 421 with an enhanced status
        assert code == 421 and text.startswith(b"4.3.2 ") and b"shutting down" in text
        daemon.wait_for("shutting down")
        deadline = time.time() + 10
        while True:  # the listener no longer accepts
            try:
                socket.create_connection(("127.0.0.1", daemon.relay_port), timeout=2).close()
            except OSError:
                break
            assert time.time() < deadline, "still accepting after SIGTERM"
            time.sleep(0.05)
        time.sleep(1.0)  # a slow client, well inside the grace
        assert finish_transfer(transfer).startswith(b"250 ")
        after = transfer.f.readline()  # the transaction over, it is told 421 too
        assert after.startswith(b"421 4.3.2 ")
        transfer.close()
        assert daemon.proc.wait(20) == 0
    log = daemon.text()
    assert "status=sent" in log
    assert "Task was destroyed" not in log and "Traceback" not in log and "pending" not in log.lower().replace(
        "possibly_sent", "")


def test_sigterm_closes_a_transfer_past_the_grace_with_421(tmp_path):
    with Daemon(tmp_path, '[service]\nshutdown_grace = 0.5\n') as daemon:
        transfer = open_transfer(daemon.relay_port)
        daemon.signal(signal.SIGTERM)
        assert transfer.f.readline().startswith(b"421 4.3.2 ")
        transfer.close()
        assert daemon.proc.wait(20) == 0
    assert daemon.find("still in a transaction after [service] shutdown_grace = 0.5s")
    assert "Task was destroyed" not in daemon.text() and "Traceback" not in daemon.text()

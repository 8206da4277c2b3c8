"""A private, throw-away Postfix instance for tests and benchmarks.

    with PrivatePostfix(tmp_path / "pf", smtpd_port=free_port(), relayhost="[127.0.0.1]:2525",
                        transport={"reject.test": "smtp:[127.0.0.1]:2600"}) as pf:
        smtplib.SMTP("127.0.0.1", pf.smtpd_port).sendmail(...)
        pf.wait_queue_empty(10)
        print(pf.log_text())

Everything the instance owns lives under `workdir`: its configuration directory (`etc/`, with its own
main.cf, master.cf and transport table), its queue (`spool/`), its data directory (`data/`) and its log
(`maillog`, written by postlogd). It is started with `postfix -c workdir/etc start`, so the system's
own Postfix (/etc/postfix, /var/spool/postfix) is never read or touched, and no multi-instance
registration is needed. Nothing runs chrooted; smtpd listens only on 127.0.0.1:<smtpd_port>; there is
no local delivery (mydestination is empty and the local transport is an error); DNS is never used
(next hops are bracketed IP addresses); retries are fast (1 s queue runs, 1-2 s backoff).

Postfix's master must be started as root (it drops privileges to mail_owner = postfix, and postdrop
is the setgid group), so `available()` says why an instance cannot run here, for tests to skip on.
"""
from __future__ import annotations

import os
import pwd
import grp
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
SENDMAIL_CANDIDATES = ("/usr/sbin/sendmail", "/usr/lib/sendmail")
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

# Services the instance needs; chroot column "n" everywhere. The smtpd line is added on start.
MASTER_CF = """\
# service     type  private unpriv  chroot  wakeup  maxproc command + args
pickup        unix  n       -       n       60      1       pickup
cleanup       unix  n       -       n       -       0       cleanup
qmgr          unix  n       -       n       300     1       qmgr
tlsmgr        unix  -       -       n       1000?   1       tlsmgr
rewrite       unix  -       -       n       -       -       trivial-rewrite
bounce        unix  -       -       n       -       0       bounce
defer         unix  -       -       n       -       0       bounce
trace         unix  -       -       n       -       0       bounce
verify        unix  -       -       n       -       1       verify
flush         unix  n       -       n       1000?   0       flush
proxymap      unix  -       -       n       -       -       proxymap
proxywrite    unix  -       -       n       -       1       proxymap
smtp          unix  -       -       n       -       -       smtp
relay         unix  -       -       n       -       -       smtp
showq         unix  n       -       n       -       -       showq
error         unix  -       -       n       -       -       error
retry         unix  -       -       n       -       -       error
discard       unix  -       -       n       -       -       discard
lmtp          unix  -       -       n       -       -       lmtp
anvil         unix  -       -       n       -       1       anvil
scache        unix  -       -       n       -       1       scache
postlog       unix-dgram n  -       n       -       1       postlogd
"""


class PostfixError(RuntimeError):
    pass


def available() -> str | None:
    """None when a private instance can run here, else the reason it cannot (for pytest.skip)."""
    if not (shutil.which("postfix") or os.access("/usr/sbin/postfix", os.X_OK)):
        return "Postfix is not installed (no postfix binary; apt-get install postfix)"
    if os.geteuid() != 0:
        return "a private Postfix instance must be started as root (its master drops privileges)"
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError:
        return "the postfix user or the postdrop group is missing (install Debian's postfix package)"
    return None


def free_port() -> int:
    """An ephemeral loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostfix:
    """One private Postfix instance under `workdir`.

    smtpd_port: where smtpd listens on 127.0.0.1 (0 picks a free port; None: no smtpd at all,
        submit with `sendmail()` instead).
    relayhost: default next hop for every domain, e.g. "[127.0.0.1]:2525" (None: direct MX delivery,
        which needs DNS and is not what tests want).
    transport: domain (or address) -> next hop, e.g. {"reject.test": "smtp:[127.0.0.1]:2600"}, written to a
        texthash table; entries win over relayhost. Change it later with `set_transport()`.
    main_cf_extra: further main.cf parameters (they override the defaults below).
    """

    def __init__(
        self,
        workdir: Path | str,
        *,
        smtpd_port: int | None = 0,
        relayhost: str | None = None,
        transport: dict[str, str] | None = None,
        myhostname: str = "postfix.test",
        mydomain: str = "test",
        maximal_queue_lifetime: str = "1d",
        bounce_queue_lifetime: str = "1d",
        delay_warning_time: str = "0h",
        destination_concurrency_limit: int = 20,
        fast_retries: bool = True,
        main_cf_extra: dict[str, object] | None = None,
        name: str = "private",
    ):
        self.workdir = Path(workdir).resolve()
        self.config_dir = self.workdir / "etc"
        self.queue_dir = self.workdir / "spool"
        self.data_dir = self.workdir / "data"
        self.maillog = self.workdir / "maillog"
        self.transport_file = self.config_dir / "transport"
        self.smtpd_port = free_port() if smtpd_port == 0 else smtpd_port
        self.relayhost = relayhost
        self.transport = dict(transport or {})
        self.name = name
        params: dict[str, object] = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue_dir,
            "data_directory": self.data_dir,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": f"postfix-{name}",
            "maillog_file": self.maillog,
            "maillog_file_prefixes": self.workdir,
            "myhostname": myhostname,
            "mydomain": mydomain,
            "myorigin": "$myhostname",
            "mydestination": "",
            "relay_domains": "",
            "local_recipient_maps": "",
            "local_transport": "error:5.1.1 local delivery is disabled",
            "alias_maps": "",
            "alias_database": "",
            "relayhost": relayhost or "",
            "transport_maps": f"texthash:{self.transport_file}",
            "mynetworks": "127.0.0.0/8",
            "mynetworks_style": "host",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            "smtputf8_enable": "no",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "biff": "no",
            "append_dot_mydomain": "no",
            "readme_directory": "no",
            "maximal_queue_lifetime": maximal_queue_lifetime,
            "bounce_queue_lifetime": bounce_queue_lifetime,
            "delay_warning_time": delay_warning_time,
            "default_destination_concurrency_limit": destination_concurrency_limit,
        }
        if fast_retries:
            params.update(queue_run_delay="1s", minimal_backoff_time="1s", maximal_backoff_time="2s")
        params.update(main_cf_extra or {})
        self.params = params
        self._master_pid: int | None = None

    # -- configuration ---------------------------------------------------------------------------------
    def _write_config(self) -> None:
        for d in (self.config_dir, self.queue_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755)  # root-owned, not group/other writable: what postfix check wants
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pw = pwd.getpwnam(str(self.params["mail_owner"]))
        os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.data_dir, 0o700)
        _make_traversable(self.workdir)
        main = "".join(f"{k} = {v}\n" for k, v in self.params.items())
        (self.config_dir / "main.cf").write_text(main)
        master = MASTER_CF
        if self.smtpd_port is not None:
            master = f"127.0.0.1:{self.smtpd_port} inet n - n - - smtpd\n" + master
        (self.config_dir / "master.cf").write_text(master)
        self._write_transport()

    def _write_transport(self) -> None:
        self.transport_file.write_text("".join(f"{k} {v}\n" for k, v in self.transport.items()))

    def set_transport(self, transport: dict[str, str]) -> None:
        """Replace the transport table (and reload a running instance so that it takes effect)."""
        self.transport = dict(transport)
        self._write_transport()
        if self.running():
            self.postfix("reload")

    # -- commands --------------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ, MAIL_CONFIG=str(self.config_dir))
        env.pop("MAIL_DEBUG", None)
        return env

    def postfix(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        proc = subprocess.run([POSTFIX, "-c", str(self.config_dir), *args], env=self._env(),
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise PostfixError(f"postfix {' '.join(args)} failed ({proc.returncode}): "
                               f"{proc.stderr.strip() or proc.stdout.strip()}\n--- maillog ---\n{self.log_text()[-3000:]}")
        return proc

    def postconf(self, *args: str) -> str:
        postconf = shutil.which("postconf") or "/usr/sbin/postconf"
        return subprocess.run([postconf, "-c", str(self.config_dir), *args], env=self._env(),
                              capture_output=True, text=True, check=True).stdout

    def start(self, timeout: float = 20) -> "PrivatePostfix":
        if self.running():
            return self
        self._write_config()
        self.postfix("start", timeout=timeout)
        self._master_pid = self._read_master_pid()
        if self.smtpd_port is not None:
            self._wait_listening(timeout)
        return self

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.smtpd_port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise PostfixError(f"smtpd not listening on 127.0.0.1:{self.smtpd_port}\n{self.log_text()[-3000:]}")
                time.sleep(0.05)

    def _read_master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def running(self) -> bool:
        pid = self._master_pid or self._read_master_pid()
        return pid is not None and _alive(pid)

    @property
    def master_pid(self) -> int | None:
        return self._master_pid or self._read_master_pid()

    def pids(self) -> list[int]:
        """The master and every process of its session (the daemons it spawned)."""
        pid = self.master_pid
        if pid is None:
            return []
        return [p for p in _session_members(pid)] or ([pid] if _alive(pid) else [])

    def stop(self, timeout: float = 10) -> None:
        """Stop the instance: SIGTERM to the master (which terminates its process group), then SIGKILL
        for whatever of its session is left. Safe to call twice or on an instance that never started."""
        pid = self.master_pid
        if pid is None:
            return
        members = set(_session_members(pid)) | ({pid} if _alive(pid) else set())
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        # leftovers: anything still in the master's session, or started from our config directory
        leftovers = (members | set(_session_members(pid)) | set(_mail_config_members(self.config_dir))) - {os.getpid()}
        for p in leftovers:
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        end = time.monotonic() + 3
        while any(_alive(p) for p in leftovers) and time.monotonic() < end:
            time.sleep(0.02)
        self._master_pid = None

    def __enter__(self) -> "PrivatePostfix":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- queue and log ---------------------------------------------------------------------------------
    def queue_ids(self) -> list[str]:
        """Queue ids of every message still in the instance (maildrop, incoming, active, deferred, hold)."""
        ids = []
        for q in QUEUES:
            for _root, _dirs, files in os.walk(self.queue_dir / q):
                ids.extend(files)
        return ids

    def wait_queue_empty(self, timeout: float = 30, poll: float = 0.05) -> None:
        deadline = time.monotonic() + timeout
        while True:
            ids = self.queue_ids()
            if not ids:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"queue not empty after {timeout}s: {ids[:10]}\n{self.log_text()[-3000:]}")
            time.sleep(poll)

    def log_text(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except OSError:
            return ""

    def sendmail(self, message: bytes, sender: str, recipients: list[str], timeout: float = 30) -> None:
        """Submit through this instance's sendmail (postdrop → maildrop → pickup)."""
        sendmail = next((p for p in SENDMAIL_CANDIDATES if os.access(p, os.X_OK)), "sendmail")
        subprocess.run([sendmail, "-C", str(self.config_dir), "-i", "-f", sender, "--", *recipients],
                       input=message, env=self._env(), check=True, timeout=timeout, capture_output=True)


# -- process helpers ---------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def _session_members(sid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields after the command: state ppid pgrp session ...
        if fields[0] != "Z" and int(fields[3]) == sid:
            out.append(int(entry))
    return out


def _mail_config_members(config_dir: Path) -> list[int]:
    needle = f"MAIL_CONFIG={config_dir}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    out.append(int(entry))
        except OSError:
            continue
    return out


def _make_traversable(path: Path) -> None:
    """Postfix daemons run as mail_owner and open some files by absolute path (data_directory, the
    log): every ancestor of the instance must be searchable by others. pytest's and mkdtemp's
    directories are 0700, so add the search bit (o+x, never read or write) where it is missing."""
    for p in [path, *path.parents]:
        try:
            st = p.stat()
        except OSError:
            continue
        if not st.st_mode & stat.S_IXOTH and st.st_uid == os.geteuid():
            os.chmod(p, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)

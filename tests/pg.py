"""A real, throw-away PostgreSQL server for tests and benchmarks.

    server = PostgresServer()            # durable=True for benchmarks: fsync and friends stay on
    server.start()
    url = server.create_database_sync()  # postgresql://bounceproxy@127.0.0.1:<port>/t_<random>
    ...
    server.stop()                        # fast shutdown, then the directory is removed

Or as a context manager: `with PostgresServer() as server: ...`.

It uses Debian's server binaries (package postgresql: /usr/lib/postgresql/<version>/bin). Everything it
owns lives in one directory made with mkdtemp under /tmp: the cluster (`data/`), the Unix socket
(`sock/`) and the server's log (`postgres.log`). It listens on 127.0.0.1 only, on a free ephemeral port,
and trusts every local connection (initdb --auth=trust) as the superuser `bounceproxy`. The system's
own clusters (/var/lib/postgresql, pg_ctlcluster) are never read or touched.

PostgreSQL refuses to run as root: as root, initdb and postgres run as the `postgres` system user (which
the Debian package creates) and the directory is chowned to it; otherwise as the current user.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PG_SKIP_REASON = "PostgreSQL server binaries not found (Debian package postgresql); .ci/run installs them"
SUPERUSER = "bounceproxy"
RUN_AS = "postgres"  # the unprivileged user when we are root
# Settings for speed: a test cluster that a crash loses is fine. Benchmarks pass durable=True.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def find_postgres_bin() -> Path | None:
    """The directory holding initdb, postgres and pg_isready: the newest /usr/lib/postgresql/<version>/bin,
    else the one on PATH; None when there is none."""
    def complete(d: Path) -> bool:
        return all(os.access(d / name, os.X_OK) for name in ("initdb", "postgres", "pg_isready"))

    def version(d: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", d.parent.name)) or (0,)

    candidates = sorted((d for d in Path("/usr/lib/postgresql").glob("*/bin") if complete(d)), key=version)
    if candidates:
        return candidates[-1]
    on_path = shutil.which("initdb")
    if on_path and complete(Path(on_path).resolve().parent):
        return Path(on_path).resolve().parent
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresError(RuntimeError):
    pass


class PostgresServer:
    """One private PostgreSQL cluster: start(), url(dbname), create_database(), stop()."""

    def __init__(self, *, durable: bool = False, settings: dict[str, str] | None = None,
                 bin_dir: Path | None = None, start_timeout: float = 60.0):
        self.bin_dir = Path(bin_dir) if bin_dir else find_postgres_bin()
        if self.bin_dir is None:
            raise PostgresError(PG_SKIP_REASON)
        self.settings = {} if durable else dict(FAST_SETTINGS)
        self.settings.update(settings or {})
        self.start_timeout = start_timeout
        self.base: Path | None = None
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._log = None
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam(RUN_AS)
            except KeyError:
                raise PostgresError(f"running as root, and there is no {RUN_AS!r} user to run PostgreSQL as "
                                    "(the Debian package postgresql creates it)") from None
            self._user: dict = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            self._uid, self._gid = pw.pw_uid, pw.pw_gid
        else:
            self._user = {}
            self._uid, self._gid = os.geteuid(), os.getegid()

    # paths
    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "sock"

    @property
    def log_path(self) -> Path:
        return self.base / "postgres.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    def url(self, dbname: str = "postgres") -> str:
        if self.port is None:
            raise PostgresError("the server is not started")
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    # running
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", TZ="UTC")
        if self._user:
            env.update(HOME=str(self.base), USER=RUN_AS, LOGNAME=RUN_AS)
        return env

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in args], cwd=self.base, env=self._env(), capture_output=True,
                              text=True, timeout=timeout, **self._user)

    def start(self) -> "PostgresServer":
        if self.proc is not None:
            return self
        self.base = Path(tempfile.mkdtemp(prefix="bounceproxy-pg-", dir="/tmp"))
        try:
            os.chown(self.base, self._uid, self._gid)
            self.socket_dir.mkdir()
            os.chown(self.socket_dir, self._uid, self._gid)
            done = self._run(self.bin_dir / "initdb", "-D", self.data_dir, "--auth=trust", "-U", SUPERUSER,
                             "-E", "UTF8", "--locale=C", "--no-sync")
            if done.returncode != 0:
                raise PostgresError(f"initdb failed ({done.returncode}): {done.stdout}{done.stderr}")
            for _ in range(10):
                if self._launch(free_port()):
                    return self
            raise PostgresError(f"postgres found no free port in 10 tries; its log:\n{self.log_text()}")
        except BaseException:
            self.stop()
            raise

    def _launch(self, port: int) -> bool:
        """Start postgres on `port` and wait until it accepts connections. False: the port was taken."""
        args = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(port),
                "-k", str(self.socket_dir), "-c", "listen_addresses=127.0.0.1"]
        for key, value in self.settings.items():
            args += ["-c", f"{key}={value}"]
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = open(self.log_path, "ab")
        # Popen(user=...) drops to the postgres user in the child, like setpriv: the pid is postgres's own,
        # so signals reach it directly. Its own session: a Ctrl-C at the terminal is not a shutdown request.
        self.proc = subprocess.Popen(args, cwd=self.base, env=self._env(), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     **self._user)
        self.port = port
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = self.log_text()[offset:]
                self._close_log()
                self.proc, self.port = None, None
                if "already in use" in text or "could not bind" in text or "could not create any TCP/IP" in text:
                    return False
                raise PostgresError(f"postgres exited at start; its log:\n{text}")
            ready = subprocess.run([str(self.bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port),
                                    "-U", SUPERUSER, "-d", "postgres", "-t", "2"], env=self._env(), timeout=10)
            if ready.returncode == 0:
                return True
            time.sleep(0.05)
        raise PostgresError(f"postgres did not accept connections within {self.start_timeout:g} s; its log:\n"
                            f"{self.log_text()[offset:]}")

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Fast shutdown (SIGINT: sessions are ended, the cluster is shut down cleanly), then the directory
        is removed. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            for sig, wait in ((signal.SIGINT, 30), (signal.SIGQUIT, 10), (signal.SIGKILL, 10)):
                try:
                    proc.send_signal(sig)
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break
        self._close_log()
        self.port = None
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # databases
    async def create_database(self, name: str | None = None) -> str:
        """CREATE DATABASE `name` (default: a fresh random name) and return its URL."""
        import asyncpg

        name = name or f"t_{secrets.token_hex(6)}"
        if not _NAME.match(name):
            raise ValueError(f"bad database name {name!r} (lower-case letters, digits and _)")
        conn = await asyncpg.connect(self.url("postgres"))
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)

    async def drop_database(self, name: str) -> None:
        """DROP DATABASE, ending the sessions still connected to it."""
        import asyncpg

        if not _NAME.match(name):
            raise ValueError(f"bad database name {name!r}")
        conn = await asyncpg.connect(self.url("postgres"))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    def create_database_sync(self, name: str | None = None) -> str:
        """create_database() from synchronous code, even while an event loop runs in this thread."""
        return _run_coroutine(self.create_database(name))

    def drop_database_sync(self, name: str) -> None:
        _run_coroutine(self.drop_database(name))


def _run_coroutine(coro):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()

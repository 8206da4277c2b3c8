#!/usr/bin/env python3
"""Relay throughput: smtp-source → smtp-sink directly, through bounceproxy, and through a stock Postfix relay.

Every cell (message size × concurrent sessions) sends the same number of messages three or four ways,
in the same run, to the same smtp-sink:

  direct       smtp-source → smtp-sink                          (the ceiling of this machine)
  bounceproxy  smtp-source → bounceproxy serve → smtp-sink       (timed until smtp-source has its last 250)
  postfix      smtp-source → private Postfix relay → smtp-sink   (timed until its queue is empty again,
                                                                   i.e. every message was delivered)

smtp-source opens a new connection for every message (it only reuses one with -d) and sends one
recipient per message. bounceproxy runs as `bounceproxy serve` with its defaults (SQLite bounce log
with synchronous=FULL, pool of 16 upstream connections, one worker), the Postfix instance is stock
apart from what makes it a private loopback relay (tests/postfix.py). Its peak memory (VmHWM of
bounceproxy and any worker processes) is printed at the end.

    bench/relay.py --quick            # about 20 seconds
    bench/relay.py                    # 2000 × 2 KB and 300 × 100 KB per cell, 1/10/50 sessions; about a minute
    bench/relay.py --repeat 3         # the median of 3 interleaved runs per cell (a shared machine is noisy)
    bench/relay.py --repeat 5 --no-postfix --baseline "env PYTHONPATH=/tmp/old .venv/bin/python -m proxy"
                                      # a change against the build checked out in /tmp/old (git worktree add):
                                      # both in the same interleaved runs, with their CPU time per message
    bench/relay.py --sizes 2048 --sessions 10 --count 5000 --profile /tmp/bp.svg   # py-spy flame graph
    bench/relay.py ... --profile /tmp/bp.txt --profile-gil    # only samples holding the GIL, as collapsed stacks
    bench/relay.py --rtt 20           # also: the upstream 20 ms away each way (a delaying proxy before the sink)
    bench/relay.py --memory           # also: 50 sessions of 10 MB messages, bounceproxy's peak memory

The bar (issue 15), judged at the end of every run that has the cells: at 10 sessions bounceproxy at least
1.5 × the Postfix relay at 2 KB and at 100 KB, at 1 session at least 1.0 × at 2 KB, and peak memory under
100 MiB with 50 sessions of 10 MB messages.

Needs Postfix's smtp-source and smtp-sink (Debian package postfix); the Postfix column needs root.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import shlex
import signal
import statistics
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.postfix import PrivatePostfix, available, free_port  # noqa: E402

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
BOUNCEPROXY = shutil.which("bounceproxy", path=str(ROOT / ".venv" / "bin")) or shutil.which("bounceproxy") or "bounceproxy"
SENDER, RECIPIENT = "app@bench.example.com", "user@bench.example.net"


@dataclass
class Result:
    rate: float | None = None  # messages per second
    seconds: float | None = None
    error: str | None = None
    client_seconds: float | None = None  # until smtp-source had its last 250, when that is not `seconds`
    wait_ms: float | None = None  # the mean wait per message, where the client measured it (pipelining client)
    cpu_us: float | None = None  # CPU time (user + system, every process of it) per message, for bounceproxy

    def latency_ms(self, count: int, sessions: int) -> float | None:
        """Mean time a message keeps the client waiting: each session sends one message at a time."""
        if self.wait_ms is not None:
            return self.wait_ms
        seconds = self.client_seconds or self.seconds
        return None if seconds is None else 1000 * seconds * sessions / count

    def cell(self) -> str:
        if self.rate is None:
            return self.error or "-"
        return f"{self.rate:,.0f}"


@dataclass
class Row:
    size: int
    sessions: int
    count: int
    results: dict[str, Result] = field(default_factory=dict)


def wait_port(port: int, timeout: float = 20, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def smtp_source(port: int, count: int, size: int, sessions: int, timeout: float) -> Result:
    cmd = [SMTP_SOURCE, "-s", str(sessions), "-m", str(count), "-l", str(size), "-f", SENDER, "-t", RECIPIENT,
           "-M", "bench.example.com", f"127.0.0.1:{port}"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Result(error=f"timeout>{timeout:.0f}s")
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()
        return Result(error=f"failed: {lines[-1][:60]}")
    return Result(rate=count / elapsed, seconds=elapsed)


def _bench_message(size: int) -> bytes:
    """A message of about `size` bytes as a client sends it: CRLF lines, none starting with a dot, and the end of data."""
    head = (f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: bench\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line)) + b".\r\n"


async def _replies(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("the relay closed the connection")
            if line[3:4] != b"-":
                out.append(line)
                break
    return out


def smtp_client(port: int, count: int, size: int, sessions: int, timeout: float, pipelining: bool) -> Result:
    """Like smtp-source (one recipient per message, `sessions` at once) but over one connection per session,
    and, with `pipelining`, MAIL, RCPT and DATA in one write (RFC 2920), as smtp-source never does. Each
    message's wait is timed from its MAIL to the final 250."""
    message = _bench_message(size)
    commands = [f"MAIL FROM:<{SENDER}>\r\n".encode(), f"RCPT TO:<{RECIPIENT}>\r\n".encode(), b"DATA\r\n"]
    waits: list[float] = []

    async def session(messages: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await _replies(reader, 1)
            writer.write(b"EHLO bench.example.com\r\n")
            await _replies(reader, 1)
            for _ in range(messages):
                start = time.perf_counter()
                if pipelining:
                    writer.write(b"".join(commands))
                    replies = await _replies(reader, 3)
                else:
                    replies = []
                    for command in commands:
                        writer.write(command)
                        replies += await _replies(reader, 1)
                if [r[:3] for r in replies] != [b"250", b"250", b"354"]:
                    raise RuntimeError(f"refused: {b' | '.join(r.strip() for r in replies)[:80]!r}")
                writer.write(message)
                (end,) = await _replies(reader, 1)
                if not end.startswith(b"250"):
                    raise RuntimeError(f"refused: {end.strip()[:60]!r}")
                waits.append(time.perf_counter() - start)
            writer.write(b"QUIT\r\n")
            await _replies(reader, 1)
        finally:
            writer.close()

    async def run() -> float:
        start = time.perf_counter()
        shares = [count // sessions + (1 if i < count % sessions else 0) for i in range(sessions)]
        await asyncio.wait_for(asyncio.gather(*(session(n) for n in shares if n)), timeout)
        return time.perf_counter() - start

    try:
        elapsed = asyncio.run(run())
    except asyncio.TimeoutError:
        return Result(error=f"timeout>{timeout:.0f}s")
    except (OSError, RuntimeError) as exc:
        return Result(error=f"failed: {str(exc)[:60]}")
    return Result(rate=count / elapsed, seconds=elapsed, wait_ms=1000 * sum(waits) / len(waits))


class DelayProxy:
    """A TCP proxy in front of the sink that holds every chunk `delay` seconds in each direction: an
    upstream one round trip of 2 × delay away, as SES is from most applications' relays. Runs its own
    event loop in a thread; bytes keep their order."""

    def __init__(self, target_port: int, delay: float):
        self.target_port, self.delay = target_port, delay
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        ready.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while chunk := await reader.read(65536):
                loop.call_at(loop.time() + self.delay, _write_if_open, writer, chunk)
            await asyncio.sleep(self.delay)  # the end of stream arrives as late as the bytes before it
        except OSError:
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        """Cancel every connection's pumps, then stop the loop: nothing is left pending at exit."""
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


def _write_if_open(writer: asyncio.StreamWriter, chunk: bytes) -> None:
    if not writer.is_closing():
        writer.write(chunk)


# -- the three targets -------------------------------------------------------------------------------------
class Sink:
    def __init__(self, workdir: Path):
        self.port = free_port()
        user = "nobody" if _user_exists("nobody") else "postfix"
        cmd = [SMTP_SINK, "-m", "1000", f"127.0.0.1:{self.port}", "1024"]
        if os.geteuid() == 0:
            cmd[1:1] = ["-u", user]
        self.log = open(workdir / "smtp-sink.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port, proc=self.proc)

    def stop(self) -> None:
        _terminate(self.proc)
        self.log.close()


class Bounceproxy:
    def __init__(self, workdir: Path, upstream_port: int, workers: int, pool_size: int | None, verp: bool,
                 command: str = BOUNCEPROXY, extra_env: dict[str, str] | None = None):
        self.port = free_port()
        self.db = workdir / "bounceproxy.db"
        env = dict(
            os.environ,
            BOUNCEPROXY_RELAY__LISTEN=f"127.0.0.1:{self.port}",
            BOUNCEPROXY_RELAY__HOSTNAME="relay.bench.test",
            BOUNCEPROXY_INBOUND__ENABLED="false",  # the bounce MX plays no part in relaying
            BOUNCEPROXY_API__LISTEN=f"127.0.0.1:{free_port()}",  # not the default 8025: runs may overlap
            BOUNCEPROXY_UPSTREAM__PROFILE="smtp",
            BOUNCEPROXY_UPSTREAM__HOST="127.0.0.1",
            BOUNCEPROXY_UPSTREAM__PORT=str(upstream_port),
            BOUNCEPROXY_UPSTREAM__TLS="none",
            BOUNCEPROXY_STORE__PATH=str(self.db),
        )
        if workers != 1:
            env["BOUNCEPROXY_RELAY__WORKERS"] = str(workers)
        if pool_size:
            env["BOUNCEPROXY_UPSTREAM__POOL_SIZE"] = str(pool_size)
        if verp:
            env.setdefault("BOUNCEPROXY_VERP_KEY", "bench-" + "k" * 40)
        env.update(extra_env or {})
        self.log_path = workdir / "bounceproxy.log"
        self.log = open(self.log_path, "w")
        # its own working directory, so that no config.toml of the caller's is read
        self.proc = subprocess.Popen([*shlex.split(command), "serve"], env=env, cwd=workdir, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_port(self.port, proc=self.proc)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"bounceproxy did not start: {exc}\n{self.log_path.read_text()[-2000:]}") from None

    def pids(self) -> list[int]:
        return [self.proc.pid, *_descendants(self.proc.pid)]

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"bounceproxy exited ({self.proc.returncode}):\n{self.log_path.read_text()[-2000:]}")

    def cpu_seconds(self) -> float:
        """User and system time of its processes so far (steadier than a rate on a shared machine)."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return total / os.sysconf("SC_CLK_TCK")

    def run(self, count: int, size: int, sessions: int, timeout: float) -> Result:
        """smtp-source through it, with the CPU time it spent per message."""
        before = self.cpu_seconds()
        result = smtp_source(self.port, count, size, sessions, timeout)
        if result.rate is not None:
            result.cpu_us = 1e6 * (self.cpu_seconds() - before) / count
        return result

    def peak_memory_kb(self) -> dict[int, int]:
        return {pid: kb for pid in self.pids() if (kb := _status_kb(pid, "VmHWM")) is not None}

    def counts(self, store_url: str | None = None) -> dict[str, int]:
        """Messages in the bounce log by status, read through the Store protocol."""
        import asyncio

        from proxy.store import StoreError, store_for_url

        async def read():
            store = await store_for_url(store_url or f"sqlite://{self.db.resolve()}").open(readonly=True)
            try:
                return (await store.metric_counts(time.time())).messages
            finally:
                await store.close()
        try:
            return asyncio.run(read())
        except StoreError as exc:
            return {"error": str(exc)}  # type: ignore[dict-item]

    def stop(self) -> None:
        _terminate(self.proc, group=True)
        self.log.close()


class Postfix:
    def __init__(self, workdir: Path, upstream_port: int, name: str = "bench"):
        self.pf = PrivatePostfix(workdir / "postfix", relayhost=f"[127.0.0.1]:{upstream_port}", name=name,
                                 myhostname="postfix.bench.test", mydomain="bench.test",
                                 main_cf_extra={"message_size_limit": 50 * 1024 * 1024})
        self.pf.start()
        self.port = self.pf.smtpd_port

    def run(self, count: int, size: int, sessions: int, timeout: float) -> Result:
        start = time.perf_counter()
        res = smtp_source(self.port, count, size, sessions, timeout)
        if res.error:
            return res
        try:
            self.pf.wait_queue_empty(max(1.0, timeout - (time.perf_counter() - start)), poll=0.01)
        except TimeoutError:
            return Result(error=f"queue>{timeout:.0f}s")
        elapsed = time.perf_counter() - start
        return Result(rate=count / elapsed, seconds=elapsed, client_seconds=res.seconds)

    def sent(self) -> int:
        return self.pf.log_text().count("status=sent")

    def stop(self) -> None:
        self.pf.stop()


# -- helpers -------------------------------------------------------------------------------------------
def _user_exists(name: str) -> bool:
    import pwd
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _terminate(proc: subprocess.Popen, group: bool = False, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    try:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait()
    except ProcessLookupError:
        pass


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = _status_kb(int(entry), "PPid")
            if ppid is not None:
                children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _median(results: list[Result]) -> Result:
    """The median rate of the runs that worked (and, apart, their median CPU per message); the first error
    when none did."""
    good = sorted((r for r in results if r.rate is not None), key=lambda r: r.rate)
    if not good:
        return results[0]
    cpus = [r.cpu_us for r in good if r.cpu_us is not None]
    cpu = statistics.median(cpus) if cpus else None
    if len(good) % 2:
        middle = good[(len(good) - 1) // 2]
        return Result(rate=middle.rate, wait_ms=middle.wait_ms, cpu_us=cpu)
    low, high = good[len(good) // 2 - 1], good[len(good) // 2]
    waits = None if low.wait_ms is None or high.wait_ms is None else (low.wait_ms + high.wait_ms) / 2
    return Result(rate=(low.rate + high.rate) / 2, wait_ms=waits, cpu_us=cpu)


def _size_label(size: int) -> str:
    return f"{size // 1024} KB" if size % 1024 == 0 else f"{size} B"


def _ratio(a: Result, b: Result) -> str:
    if a.rate is None or b.rate is None or b.rate == 0:
        return "-"
    return f"{a.rate / b.rate:.2f}"


def _cpu_ratio(a: Result, b: Result) -> str:
    return "-" if not (a.cpu_us and b.cpu_us) else f"{a.cpu_us / b.cpu_us:.2f}"


def print_table(rows: list[Row], with_postfix: bool) -> None:
    head = ["cell", "direct msg/s", "bounceproxy msg/s", "bp/direct"]
    if with_postfix:
        head += ["postfix msg/s", "bp/postfix"]
    with_baseline = any("baseline" in row.results for row in rows)
    if with_baseline:
        head += ["baseline msg/s", "bp/baseline", "CPU µs/msg bp", "baseline", "CPU bp/baseline"]
    lines = []
    for row in rows:
        r = row.results
        line = [f"{_size_label(row.size)} × {row.sessions} sess ({row.count} msgs)", r["direct"].cell(),
                r["bounceproxy"].cell(), _ratio(r["bounceproxy"], r["direct"])]
        if with_postfix:
            line += [r["postfix"].cell(), _ratio(r["bounceproxy"], r["postfix"])]
        if with_baseline:
            bp, base = r["bounceproxy"], r["baseline"]
            line += [base.cell(), _ratio(bp, base), f"{bp.cpu_us:,.0f}" if bp.cpu_us else "-",
                     f"{base.cpu_us:,.0f}" if base.cpu_us else "-", _cpu_ratio(bp, base)]
        lines.append(line)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: " | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    print(fmt(head))
    print("-+-".join("-" * w for w in widths))
    for line in lines:
        print(fmt(line))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short run: 300 × 2 KB and 60 × 100 KB per cell")
    ap.add_argument("--count", type=int, help="messages per cell, every size (default 2000 for 2 KB, 300 for 100 KB)")
    ap.add_argument("--sizes", default="2048,102400", help="message payload sizes in bytes (smtp-source -l)")
    ap.add_argument("--sessions", default="1,10,50", help="concurrent sessions (smtp-source -s)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell and target, interleaved; the median is shown")
    ap.add_argument("--no-postfix", action="store_true", help="skip the stock Postfix relay column")
    ap.add_argument("--workers", type=int, default=1, help="bounceproxy [relay] workers (default 1)")
    ap.add_argument("--pool-size", type=int, help="bounceproxy [upstream] pool_size (default: its own default)")
    ap.add_argument("--verp", action="store_true", help="set BOUNCEPROXY_VERP_KEY so bounceproxy signs VERP senders")
    ap.add_argument("--cell-timeout", type=float, default=300, help="seconds allowed per measurement")
    ap.add_argument("--profile", metavar="FILE", help="py-spy record bounceproxy during its runs (FILE.svg or .txt)")
    ap.add_argument("--profile-gil", action="store_true",
                    help="with --profile: only samples holding the GIL (where the event loop's thread spends its CPU)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, bounce log, Postfix)")
    ap.add_argument("--rtt", type=float, nargs="?", const=20.0, metavar="MS",
                    help="also run the round-trip profile: the sink MS ms away each way (default 20) for "
                         "bounceproxy and Postfix alike, 2 KB at --rtt-sessions")
    ap.add_argument("--rtt-sessions", default="10,50", help="sessions of the round-trip profile")
    ap.add_argument("--rtt-count", type=int, default=300, help="messages per round-trip cell")
    ap.add_argument("--rtt-pools", default="16,64", help="bounceproxy pool_size values of the round-trip profile")
    ap.add_argument("--memory", action="store_true",
                    help="also send 50 sessions of 10 MB messages through a fresh bounceproxy: its peak memory")
    ap.add_argument("--memory-count", type=int, default=100, help="messages of the memory cell")
    ap.add_argument("--bounceproxy", metavar="CMD", default=BOUNCEPROXY,
                    help=f"the bounceproxy executable to run as `CMD serve` (default {BOUNCEPROXY})")
    ap.add_argument("--baseline", metavar="CMD",
                    help="also measure another bounceproxy (`CMD serve`, say an older build's) in the same "
                         "interleaved runs: its rate, and both one's CPU time per message, a steadier figure")
    args = ap.parse_args(argv)

    for tool in (SMTP_SOURCE, SMTP_SINK):
        if not os.access(tool, os.X_OK):
            print(f"relay.py: {tool} not found: install Debian's postfix package", file=sys.stderr)
            return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    sessions = [int(s) for s in args.sessions.split(",")]

    def count_for(size: int) -> int:
        if args.count:
            return args.count
        if args.quick:
            return 300 if size <= 16384 else 60
        return 2000 if size <= 16384 else 300

    with_postfix = not args.no_postfix
    if with_postfix and (why := available()):
        print(f"relay.py: no Postfix column: {why}", file=sys.stderr)
        with_postfix = False

    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)  # so that `finally` stops bounceproxy, Postfix and the sink

    workdir = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    os.chmod(workdir, 0o755)
    sink = bp = pf = spy = base = None
    rows: list[Row] = []
    try:
        sink = Sink(workdir)
        bp = Bounceproxy(workdir, sink.port, args.workers, args.pool_size, args.verp, args.bounceproxy)
        if args.baseline:
            (workdir / "baseline").mkdir()
            base = Bounceproxy(workdir / "baseline", sink.port, args.workers, args.pool_size, args.verp, args.baseline)
        if with_postfix:
            pf = Postfix(workdir, sink.port)
        if args.profile:
            spy = _start_py_spy(bp, args.profile, args.profile_gil)
        print(f"# load average at start: {_loadavg()}", flush=True)
        print(f"# {os.cpu_count()} CPUs; smtp-sink :{sink.port}; bounceproxy :{bp.port} (workers={args.workers})"
              + (f"; postfix :{pf.port}" if pf else "") + f"; work dir {workdir}", flush=True)
        for size in sizes:
            for n in sessions:
                count = count_for(size)
                row = Row(size, n, count)
                warm = min(count, max(2 * n, 20))
                runs: dict[str, list[Result]] = {}
                for _ in range(args.repeat):  # interleaved, so that a noisy moment hits every target alike
                    smtp_source(sink.port, warm, size, n, args.cell_timeout)
                    runs.setdefault("direct", []).append(smtp_source(sink.port, count, size, n, args.cell_timeout))
                    for name, relay in (("bounceproxy", bp), ("baseline", base)):
                        if relay is not None:
                            smtp_source(relay.port, warm, size, n, args.cell_timeout)
                            runs.setdefault(name, []).append(relay.run(count, size, n, args.cell_timeout))
                            relay.check_alive()
                    if pf:
                        pf.run(warm, size, n, args.cell_timeout)
                        runs.setdefault("postfix", []).append(pf.run(count, size, n, args.cell_timeout))
                row.results = {name: _median(results) for name, results in runs.items()}
                rows.append(row)
                r = row.results
                print(f"  {_size_label(size)} × {n}: direct {r['direct'].cell()}, bounceproxy {r['bounceproxy'].cell()}"
                      + (f", baseline {r['baseline'].cell()}" if base else "")
                      + (f", postfix {r['postfix'].cell()}" if pf else "") + " msg/s", flush=True)
        print(f"# load average at end: {_loadavg()}  (other work on the machine skews every column)", flush=True)
        memory = bp.peak_memory_kb()
        counts = bp.counts()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
            print(f"# py-spy profile written to {args.profile}")
        print()
        print_table(rows, pf is not None)
        print()
        total_kb = sum(memory.values())
        print(f"bounceproxy peak memory (VmHWM): {total_kb / 1024:.1f} MiB"
              + (f" over {len(memory)} processes: " + ", ".join(f"{p}={kb / 1024:.1f} MiB" for p, kb in memory.items())
                 if len(memory) > 1 else ""))
        print(f"bounceproxy bounce log: {counts}")
        if pf:
            print(f"postfix deliveries logged: {pf.sent()} status=sent")
        memory_mib = None
        if args.memory:
            memory_mib = memory_cell(workdir, sink, args)
        if args.rtt is not None:
            rtt_profile(workdir, sink, args, with_postfix=pf is not None)
        print()
        judge(rows, memory_mib, pf is not None)
        return 0
    finally:
        if spy is not None and spy.poll() is None:
            _terminate(spy)
        for target in (bp, base, pf, sink):
            if target is not None:
                try:
                    target.stop()
                except Exception as exc:  # noqa: BLE001 - stop the others anyway
                    print(f"relay.py: stopping {type(target).__name__}: {exc}", file=sys.stderr)
        if args.keep:
            print(f"# kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def judge(rows: list[Row], memory_mib: float | None, with_postfix: bool) -> bool:
    """The bar of issue 15, each part with its figure; MET only when every part was measured and holds."""
    parts: list[tuple[str, bool | None]] = []
    for size, sessions, need in ((2048, 10, 1.5), (102400, 10, 1.5), (2048, 1, 1.0)):
        row = next((r for r in rows if r.size == size and r.sessions == sessions), None)
        what = f"{_size_label(size)} × {sessions} sess: bounceproxy/postfix >= {need}"
        bp_rate = row and row.results["bounceproxy"].rate
        pf_rate = row and with_postfix and row.results["postfix"].rate
        if not (bp_rate and pf_rate):
            parts.append((f"{what}: not measured", None))
        else:
            parts.append((f"{what}: {bp_rate / pf_rate:.2f}", bp_rate >= need * pf_rate))
    if memory_mib is None:
        parts.append(("peak memory, 50 sessions × 10 MB, < 100 MiB: not measured (--memory)", None))
    else:
        parts.append((f"peak memory, 50 sessions × 10 MB, < 100 MiB: {memory_mib:.1f} MiB", memory_mib < 100))
    for text, ok in parts:
        print(f"  {'MET    ' if ok else 'NOT MET' if ok is False else 'skipped'}  {text}")
    verdict = all(ok for _, ok in parts)
    missing = any(ok is None for _, ok in parts)
    print(f"bar: {'MET' if verdict else 'NOT JUDGED (parts not measured)' if missing and all(ok is not False for _, ok in parts) else 'NOT MET'}")
    return verdict


def memory_cell(workdir: Path, sink: Sink, args) -> float | None:
    """50 sessions of 10 MB messages through a fresh bounceproxy: the peak memory (VmHWM) they cost."""
    size, sessions, count = 10 * 1024 * 1024, 50, args.memory_count
    home = workdir / "memory"
    home.mkdir()
    bp = Bounceproxy(home, sink.port, args.workers, args.pool_size, args.verp, args.bounceproxy)
    try:
        res = smtp_source(bp.port, count, size, sessions, args.cell_timeout * 4)
        mib = sum(bp.peak_memory_kb().values()) / 1024
        counts = bp.counts()
    finally:
        bp.stop()
    print(f"memory: {count} × 10 MB over {sessions} sessions: {res.cell()} msg/s, peak {mib:.1f} MiB, "
          f"bounce log {counts}", flush=True)
    return mib if res.rate is not None else None


def rtt_profile(workdir: Path, sink: Sink, args, with_postfix: bool) -> None:
    """Throughput and the client's wait with the upstream `--rtt` ms away each way, for bounceproxy at each
    --rtt-pools size and for Postfix. bounceproxy passes each reply through, so the client waits for every
    upstream round trip; Postfix answers from its queue and delivers afterwards (timed until delivered)."""
    delay = args.rtt / 1000
    proxy = DelayProxy(sink.port, delay)
    count, size = args.rtt_count, 2048
    sessions = [int(n) for n in args.rtt_sessions.split(",")]
    lines: list[list[str]] = []
    targets: list = []
    try:
        for pool in [int(p) for p in args.rtt_pools.split(",")]:
            home = workdir / f"rtt-pool-{pool}"
            home.mkdir()
            bp = Bounceproxy(home, proxy.port, args.workers, pool, args.verp, args.bounceproxy)
            targets.append(bp)
            for n in sessions:
                smtp_source(bp.port, min(count, 2 * n), size, n, args.cell_timeout)
                res = _median([smtp_source(bp.port, count, size, n, args.cell_timeout) for _ in range(args.repeat)])
                lines.append([f"bounceproxy pool_size={pool}", str(n), res.cell(), _ms(res.latency_ms(count, n))])
            bp.stop()
            targets.remove(bp)
        # Pipelining towards the upstream, on and off ([upstream] pipelining), for a client that pipelines
        # and one that does not, at the largest pool (so that the pool does not bound it).
        pool = max(int(p) for p in args.rtt_pools.split(","))
        for upstream_pipelining in ("true", "false"):
            home = workdir / f"rtt-pipelining-{upstream_pipelining}"
            home.mkdir()
            bp = Bounceproxy(home, proxy.port, args.workers, pool, args.verp, args.bounceproxy,
                             extra_env={"BOUNCEPROXY_UPSTREAM__PIPELINING": upstream_pipelining})
            targets.append(bp)
            for n in sessions:
                for client_pipelining in (False, True):
                    smtp_client(bp.port, min(count, 2 * n), size, n, args.cell_timeout, client_pipelining)
                    res = _median([smtp_client(bp.port, count, size, n, args.cell_timeout, client_pipelining)
                                   for _ in range(args.repeat)])
                    client = "pipelining client" if client_pipelining else "one command at a time"
                    lines.append([f"bounceproxy pool_size={pool} pipelining={upstream_pipelining}, {client}", str(n),
                                  res.cell(), _ms(res.latency_ms(count, n))])
            bp.stop()
            targets.remove(bp)
        if with_postfix:
            (workdir / "rtt").mkdir()
            pf = Postfix(workdir / "rtt", proxy.port, name="bench-rtt")
            targets.append(pf)
            for n in sessions:
                pf.run(min(count, 2 * n), size, n, args.cell_timeout)
                res = _median([pf.run(count, size, n, args.cell_timeout) for _ in range(args.repeat)])
                lines.append(["postfix (until delivered)", str(n), res.cell(), _ms(res.latency_ms(count, n))])
    finally:
        for target in targets:
            target.stop()
        proxy.stop()
    print()
    print(f"round-trip profile: 2 KB, {count} messages, the sink {args.rtt:g} ms away each way "
          f"(one upstream round trip {2 * args.rtt:g} ms)")
    head = ["relay", "sessions", "msg/s", "client wait per msg"]
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    for line in [head, *lines]:
        print(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
    print("  bounceproxy: the client waits for the upstream's round trips (MAIL, RCPT, DATA, end of data; DATA goes "
          "when the client sends it, so its round trip overlaps the client's body), and at most pool_size messages "
          "are in flight at once; Postfix answers from its queue (the client's wait) and delivers afterwards (msg/s "
          "counts until every message was delivered).")
    print("  smtp-source opens a connection per message and never pipelines; the `pipelining=` rows use one "
          "connection per session (bench/relay.py's own client), one command at a time or MAIL+RCPT+DATA in one "
          "write: with [upstream] pipelining the relay sends that MAIL, RCPT and DATA upstream in one write "
          "(two round trips per message, the flight and the end of data, instead of four).")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _start_py_spy(bp: Bounceproxy, out: str, gil: bool = False) -> subprocess.Popen | None:
    spy = shutil.which("py-spy", path=str(ROOT / ".venv" / "bin")) or shutil.which("py-spy")
    if not spy:
        print("relay.py: --profile needs py-spy (.venv/bin/pip install py-spy)", file=sys.stderr)
        return None
    fmt = "raw" if out.endswith(".txt") else "flamegraph"
    proc = subprocess.Popen([spy, "record", "--subprocesses", "-r", "200", *(["--gil"] if gil else []), "-f", fmt, "-o", out, "-p", str(bp.proc.pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    return proc


if __name__ == "__main__":
    sys.exit(main())

"""The in-flight journal of the SQLite bounce log: what the relay is sending, on disk before it goes.

Before the end of data goes upstream, the fact that a message may reach its recipients must survive a
crash of the machine. With SQLite that fact is one line appended to this process's journal and made
durable by an fdatasync of that one small file, shared by every message appended before it: the log
itself then takes one commit per message (its outcome), not two, and none of them waits for the disk.

A journal belongs to the process that holds its `flock`. One nobody holds is an orphan: the process
that wrote it stopped, and its messages whose outcome the log does not have become possibly_sent.
A journal is rotated once large: the lines of messages still going upstream move to a new file, the
others go once the WAL that holds their outcomes is synced.
"""
from __future__ import annotations

import fcntl
import glob
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass

ROTATE_BYTES = 4 << 20  # a journal this large is rotated (about ten thousand messages)


@dataclass(slots=True)
class JournalEntry:
    """A message as it was when it went upstream: its row (in units.MESSAGE_COLUMNS order) and
    recipients (address, status)."""

    row: list
    recipients: list[tuple[str, str]]


def entry_line(row: tuple, recipients: list[tuple[str, str]]) -> bytes:
    return json.dumps([list(row), recipients], separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def read_entries(data: bytes) -> list[JournalEntry]:
    """The journal's lines; one that is not whole (the write a crash cut short, never synced and so never
    acted on) is skipped, as is anything that is not an entry."""
    entries = []
    for line in data.split(b"\n"):
        try:
            row, recipients = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, list) and row and isinstance(row[0], str) and isinstance(recipients, list):
            entries.append(JournalEntry(row, [(str(a), str(s)) for a, s in recipients]))
    return entries


def _sync_directory(path: str) -> None:
    """A new or renamed file's name is durable only once its directory is synced."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(db_path: str) -> tuple[str, int]:
    """A new journal, locked before it has the name orphans are looked for under."""
    name = f"{db_path}-inflight-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(name + ".new", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(name + ".new", name)
    except OSError:
        os.close(fd)
        raise
    return name, fd


class InFlightJournal:
    """This process's journal (see the module's docstring). Appends happen in the event loop's thread;
    `fd` may be synced from another thread, and is only replaced by `rotate`, which the caller runs when
    no such sync is under way."""

    def __init__(self, db_path: str, rotate_bytes: int = ROTATE_BYTES):
        self.db_path = db_path
        self.rotate_bytes = rotate_bytes
        self.path, self.fd = _create(db_path)
        _sync_directory(self.path)
        self.open_lines: dict[str, bytes] = {}  # relay id -> line, until the log has the message's outcome
        self.size = 0
        self.appended = 0  # lines appended so far; `synced` of them are on disk
        self.synced = 0

    def append(self, row: tuple, recipients: list[tuple[str, str]]) -> int:
        """Write the message's line (not yet synced); returns its number."""
        line = entry_line(row, recipients)
        written = os.write(self.fd, line)
        if written != len(line):  # a full disk: the line is cut short, and a torn line is skipped
            raise OSError(f"journal {self.path}: {written} of {len(line)} bytes written")
        self.open_lines[row[0]] = line
        self.size += written
        self.appended += 1
        return self.appended

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def settled(self, relay_id: str) -> None:
        """The log has the message's outcome (committed): its line may go at the next rotation."""
        self.open_lines.pop(relay_id, None)

    def rotate(self, sync_log: Callable[[], None]) -> None:
        """Start a new journal holding the lines of messages still in flight, once the log's outcomes of
        the others are on disk (`sync_log`); the old file goes only then."""
        sync_log()
        path, fd = _create(self.db_path)
        try:
            data = b"".join(self.open_lines.values())
            if data:
                os.write(fd, data)
            os.fdatasync(fd)
            _sync_directory(path)
        except OSError:
            os.close(fd)
            os.unlink(path)
            raise
        old_path, old_fd = self.path, self.fd
        self.path, self.fd, self.size = path, fd, len(data)
        self.synced = self.appended  # every line not yet settled is in the new file, synced
        os.unlink(old_path)
        os.close(old_fd)

    def close(self) -> None:
        """Stop: the file goes when every message in it has its outcome in the log, else it stays, synced,
        for the next start to find."""
        if self.fd < 0:
            return
        try:
            if self.open_lines:
                os.fdatasync(self.fd)
            else:
                os.unlink(self.path)
        finally:
            os.close(self.fd)
            self.fd = -1


class Orphan:
    """A journal whose process stopped, locked while this process settles its messages."""

    def __init__(self, path: str, fd: int, data: bytes):
        self.path, self._fd, self.entries = path, fd, read_entries(data)

    def forget(self) -> None:
        """Its messages are settled in the log (durably): the file goes."""
        os.unlink(self.path)
        _sync_directory(self.path)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def orphans(db_path: str) -> list[Orphan]:
    """The journals of processes that stopped, each locked (so that two processes starting at once never
    both take one) until the caller releases it."""
    found = []
    for path in sorted(glob.glob(glob.escape(db_path) + "-inflight-*")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not os.path.exists(path):  # settled by another process while this one opened it
                raise FileNotFoundError(path)
            with open(fd, "rb", closefd=False) as f:
                found.append(Orphan(path, fd, f.read()))
        except OSError:  # its process runs, or it is gone
            os.close(fd)
    return found

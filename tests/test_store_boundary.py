"""The store boundary holds: nothing outside proxy/store/ speaks SQL or touches a database driver, and
no test outside the store's own reads the SQLite file (they read the log through the Store protocol,
so that every one of them could run on PostgreSQL too)."""
from __future__ import annotations

import ast
import re

from tests.conftest import ROOT

DRIVERS = {"sqlite3", "aiosqlite", "asyncpg"}
SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO\s+\w+|UPDATE\s+\w+\s+SET|DELETE\s+FROM\s+\w+)\b", re.I | re.S)
# Tests that provoke the SQLite store's own failure mode (another process holding the write lock);
# they read nothing through sqlite3.
LOCK_HOLDERS = {"test_relay.py", "test_outage.py"}


def imported(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def strings(path) -> list[str]:
    return [n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_only_the_store_speaks_sql_or_imports_a_driver():
    offenders = []
    for path in sorted((ROOT / "proxy").rglob("*.py")):
        if path.is_relative_to(ROOT / "proxy" / "store"):
            continue
        if imported(path) & DRIVERS:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(imported(path) & DRIVERS)}")
        offenders += [f"{path.relative_to(ROOT)} has SQL: {s[:60]!r}" for s in strings(path) if SQL.search(s)]
        if "._fetch" in path.read_text() or "._submit" in path.read_text():
            offenders.append(f"{path.relative_to(ROOT)} calls a private store method")
    assert offenders == []


def test_no_test_reads_the_sqlite_file():
    offenders = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        # the store's own tests, this one, the parser's purity check (names drivers it forbids) and the
        # PostgreSQL fixture's own test (it checks the server, not the log)
        if path.name in {"test_store.py", "test_store_boundary.py", "test_dsn_pure.py", "test_pg_fixture.py"}:
            continue
        uses = imported(path) & DRIVERS - ({"sqlite3"} if path.name in LOCK_HOLDERS else set())
        if uses:
            offenders.append(f"{path.name} imports {sorted(uses)}")
        offenders += [f"{path.name} runs SQL: {s[:60]!r}" for s in strings(path)
                      if SQL.search(s) and path.name not in LOCK_HOLDERS]
    assert offenders == []
    for name in LOCK_HOLDERS:  # and those only hold the lock
        text = (ROOT / "tests" / name).read_text()
        assert "BEGIN IMMEDIATE" in text and ".fetch" not in text.replace(".fetchall()", "")

"""proxy.dsn stays pure: bytes in, reports out, nothing else.

Walks the source of every module under proxy/dsn (no import needed, so a module that would
open a socket at import time is caught too) and fails on any I/O, concurrency or project
dependency other than proxy.model and proxy.dsn itself (DESIGN.md: dependencies point inward).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

DSN = Path(__file__).resolve().parents[1] / "proxy" / "dsn"
MODULES = sorted(DSN.rglob("*.py"))

FORBIDDEN_MODULES = {"socket", "asyncio", "sqlite3", "aiosqlite", "os", "subprocess", "pathlib", "shutil", "tempfile",
                     "logging", "threading", "multiprocessing", "io", "urllib", "http", "ssl", "select", "selectors"}
FORBIDDEN_CALLS = {"open", "exec", "eval", "__import__", "input", "print", "breakpoint"}
ALLOWED_PROJECT = ("proxy.model", "proxy.dsn")


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside proxy.dsn by construction
                continue
            yield node.lineno, node.module or ""
            for alias in node.names:  # "from proxy import store" imports proxy.store
                yield node.lineno, f"{node.module}.{alias.name}"


def test_there_are_modules_to_check():
    names = {p.name for p in MODULES}
    assert {"__init__.py", "parser.py", "rfc3464.py", "arf.py", "autoreply.py", "original.py", "rows.py"} <= names
    assert (DSN / "detectors" / "registry.py").exists()


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(DSN)))
def test_module_is_pure(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    problems = []
    for lineno, name in _imports(tree):
        top = name.split(".")[0]
        if top in FORBIDDEN_MODULES:
            problems.append(f"line {lineno}: imports {name}")
        if top == "proxy" and name != "proxy" and not name.startswith(ALLOWED_PROJECT):
            problems.append(f"line {lineno}: imports {name} (only proxy.model and proxy.dsn.* allowed)")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
            problems.append(f"line {node.lineno}: calls {node.func.id}()")
        if isinstance(node, ast.Attribute) and node.attr in {"read_bytes", "read_text", "write_text", "write_bytes"}:
            problems.append(f"line {node.lineno}: file access .{node.attr}")
    assert not problems, f"{path.name} is not pure:\n" + "\n".join(problems)


def test_import_loads_nothing_impure():
    """Importing and using the parser pulls in no I/O module of its own accord."""
    code = (
        "import sys, email, email.parser, email.policy, email.message\n"  # the stdlib's own (it imports socket)
        "before = set(sys.modules)\n"
        "import proxy.dsn as d\n"
        "d.parse(b'From: MAILER-DAEMON@example.org\\nSubject: Undelivered Mail\\n\\nhello\\n')\n"
        "new = set(sys.modules) - before\n"
        "bad = sorted(m for m in new if m.split('.')[0] in {'socket', 'asyncio', 'sqlite3', 'aiosqlite', 'subprocess'}"
        " or (m.startswith('proxy.') and not m.startswith(('proxy.dsn', 'proxy.model'))))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=DSN.parents[1], timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_package_import_is_light():
    """`import proxy.dsn` must not load the email package: commands that never parse pay nothing."""
    code = "import sys, proxy.dsn\nprint('email.feedparser' in sys.modules, 'proxy.dsn.parser' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=DSN.parents[1], timeout=60)
    assert result.stdout.split() == ["False", "False"], result.stdout + result.stderr

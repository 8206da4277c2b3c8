#!/usr/bin/env python3
"""How the parser does on ../shared/samples/flufl/ (GNU Mailman's bounce corpus): of the files with an
expectation, how many give exactly the expected recipients, and how many yield a status code and
the original Message-ID.

    .venv/bin/python bench/flufl.py
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLUFL = ROOT.parent / "shared" / "samples" / "flufl"


def main() -> int:
    if not FLUFL.is_dir():
        print(f"no samples at {FLUFL}")
        return 1
    expected = json.loads((FLUFL / "expected.json").read_text())
    files = sorted(name for name, exp in expected.items() if exp is not None)
    out = subprocess.run([sys.executable, "-m", "proxy", "parse", "--json", *(str(FLUFL / f) for f in files)],
                         capture_output=True, text=True, cwd=ROOT, check=False).stdout
    found: dict[str, set[str]] = {f: set() for f in files}
    with_status, with_msgid = set(), set()
    for line in out.splitlines():
        row = json.loads(line)
        name = Path(row["file"]).name
        if row["recipient"]:
            found[name].add(row["recipient"].lower())
        if row.get("status"):
            with_status.add(name)
        if row.get("original_message_id"):
            with_msgid.add(name)
    misses = [f for f in files if found[f] != {a.lower() for a in expected[f]["recipients"]}]
    print(f"flufl: {len(files)} files with an expectation: {len(files) - len(misses)} match their recipients exactly "
          f"(bar >= 112); {len(with_status)} with a status code; {len(with_msgid)} with the original Message-ID")
    for name in misses:
        print(f"  differs: {name}: expected {sorted(expected[name]['recipients'])}, got {sorted(found[name])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

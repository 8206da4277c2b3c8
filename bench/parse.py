"""Throughput of proxy.dsn.parse over every real sample, against the stdlib MIME parse alone.

    python bench/parse.py [--rounds N] [--fuzz N]

Prints files/s of `proxy.dsn.parse`, files/s of `email.message_from_bytes` (compat32)
over the same bytes in the same run, and their ratio (the bar is >= 0.5: the parser may
cost at most as much again as reading the MIME). `--fuzz N` parses N mutated samples and
reports the slowest parse (the bar is < 50 ms on any input).
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "samples"
sys.path.insert(0, str(ROOT))


def sample_bytes() -> list[bytes]:
    files = sorted(SAMPLES.glob("sisimai/maildir/**/*.eml")) + sorted(SAMPLES.glob("flufl/*.txt"))
    return [f.read_bytes() for f in files if f.name != "LICENSE"]


def rate(function, corpus: list[bytes], rounds: int) -> float:
    """Files/s of the best round. The regex cache is emptied before each round: a real mail
    never repeats a MIME boundary, so the stdlib compiles one per multipart every time."""
    import re

    best = float("inf")
    for _ in range(rounds):
        re.purge()
        start = time.perf_counter()
        for raw in corpus:
            function(raw)
        best = min(best, time.perf_counter() - start)
    return len(corpus) / best


def mutate(raw: bytes, rng: random.Random) -> bytes:
    """One random damage of the kinds real mail suffers: cut, flipped bytes, lost or doubled lines."""
    data = bytearray(raw)
    for _ in range(rng.randint(1, 6)):
        if not data:
            break
        op = rng.randrange(6)
        i = rng.randrange(len(data))
        if op == 0:
            del data[i:]
        elif op == 1:
            data[i] = rng.randrange(256)
        elif op == 2:
            j = min(len(data), i + rng.randint(1, 400))
            data[i:i] = data[i:j] * rng.randint(1, 8)
        elif op == 3:
            del data[i : i + rng.randint(1, 200)]
        elif op == 4:
            data[i:i] = rng.choice([b"\r", b"\n", b"\r\n", b"\n\n", b"--", b"\x00", b"=?utf-8?b?", b": ", b"<", b"@"])
        else:
            data = data.replace(b"\n", rng.choice([b"\r\n", b"\r", b"\n "]))
    return bytes(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--fuzz", type=int, default=0, metavar="N")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    import proxy.dsn as dsn

    import_s = time.perf_counter() - t0
    import email
    from email import policy

    corpus = sample_bytes()
    dsn.parse(corpus[0])  # load the formats before timing
    baseline = rate(lambda raw: email.message_from_bytes(raw, policy=policy.compat32), corpus, args.rounds)
    ours = rate(dsn.parse, corpus, args.rounds)
    print(f"samples: {len(corpus)}  import proxy.dsn: {import_s * 1000:.1f} ms")
    print(f"email.message_from_bytes: {baseline:8.0f} files/s")
    print(f"proxy.dsn.parse:          {ours:8.0f} files/s")
    print(f"ratio: {ours / baseline:.2f}  (bar >= 0.5)")
    if args.fuzz:
        rng = random.Random(args.seed)
        slowest, worst = 0.0, None
        for n in range(args.fuzz):
            raw = mutate(rng.choice(corpus), rng)
            start = time.perf_counter()
            try:
                dsn.parse(raw)
            except dsn.ParseError:
                pass
            took = time.perf_counter() - start
            if took > slowest:
                slowest, worst = took, n
        print(f"fuzz: {args.fuzz} mutated inputs, slowest parse {slowest * 1000:.1f} ms (input #{worst}; bar < 50 ms)")


if __name__ == "__main__":
    main()

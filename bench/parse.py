"""Throughput of proxy.dsn.parse over every real sample, against the stdlib MIME parse alone.

    python bench/parse.py [--rounds N] [--fuzz N]

Prints files/s of `proxy.dsn.parse`, files/s of `email.message_from_bytes` (compat32)
over the same bytes in the same run, and their ratio (the bar is >= 0.5: the parser may
cost at most as much again as reading the MIME). `--fuzz N` parses N mutated samples and
reports the slowest parse (the bar is < 50 ms on any input).
"""
from __future__ import annotations

import argparse
import os
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


def rates(functions, corpus: list[bytes], rounds: int) -> list[float]:
    """Files/s of each function, best round of each; the rounds alternate between the
    functions so that a machine busy with something else slows both alike.

    The regex cache is emptied before each round: a real mail never repeats a MIME
    boundary, so the stdlib compiles one per multipart every time.
    """
    import re

    best = [float("inf")] * len(functions)
    for _ in range(rounds):
        for i, function in enumerate(functions):
            re.purge()
            start = time.perf_counter()
            for raw in corpus:
                function(raw)
            best[i] = min(best[i], time.perf_counter() - start)
    return [len(corpus) / b for b in best]


def classify_share(dsn, corpus: list[bytes]) -> float:
    """The part of a parse spent in proxy.dsn.classify (a separate module with its own budget)."""
    from proxy.dsn import parser

    real = parser.classify
    spent = [0.0]

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    parser.classify = timed
    try:
        start = time.perf_counter()
        for raw in corpus:
            dsn.parse(raw)
        total = time.perf_counter() - start
    finally:
        parser.classify = real
    return spent[0] / total


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
    ap.add_argument("--rounds", type=int, default=9)
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
    baseline, ours = rates([lambda raw: email.message_from_bytes(raw, policy=policy.compat32), dsn.parse],
                           corpus, args.rounds)
    print(f"samples: {len(corpus)}  import proxy.dsn: {import_s * 1000:.1f} ms")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores / 2:  # the rounds alternate, but a busy machine still blurs the ratio
        print(f"note: load average {load:.1f} on {cores} cores: re-measure when the machine is idle")
    print(f"email.message_from_bytes: {baseline:8.0f} files/s")
    print(f"proxy.dsn.parse:          {ours:8.0f} files/s")
    print(f"ratio: {ours / baseline:.2f}  (bar >= 0.5)")
    share = classify_share(dsn, corpus)
    print(f"of proxy.dsn.parse's time, classify() takes {share:.0%}; the ratio without it would be "
          f"{ours / baseline / (1 - share):.2f}")
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

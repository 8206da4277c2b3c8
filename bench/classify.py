#!/usr/bin/env python3
"""How well the parser's verdicts generalise: scores on the writing or the checking part of the samples.

    .venv/bin/python bench/classify.py                      # both parts, the summary table
    .venv/bin/python bench/classify.py --part check -v      # one part: per reason, confusion, worst rows
    .venv/bin/python bench/classify.py --make-split         # rewrite bench/split.json (seed 11)

The shared samples are split per family (sisimai: the reference's `family`, flufl: the file name
before `_NN`) with a fixed seed: in every family about a third of the files go to the checking
part, the rest to the writing part. Rules are written while looking at the writing part only; the
checking part is scored to measure, never read. When both parts' scores rise together, the rules
fit formats rather than files.

Scored as ../shared/tools/score-samples scores (Sisimai 5.2's answers in expected.jsonl): recipients
(precision, recall, F1; delivered DSNs and auto-replies neutral), status (a Sisimai pseudo status:
class only), hard/soft (not for feedback/vacation/delivered/undefined/onhold), reason (not where
Sisimai says undefined/onhold), Message-ID, and non-bounces reported as bounces (files Sisimai calls
negative). flufl/expected.json adds exact recipient sets and temporary-vs-permanent.
"""
from __future__ import annotations

import argparse
import collections
import json
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "samples"
SISIMAI = SAMPLES / "sisimai"
FLUFL = SAMPLES / "flufl"
SPLIT = Path(__file__).with_name("split.json")
SEED = 11
NO_HARDSOFT = {"feedback", "vacation", "delivered", "undefined", "onhold", ""}
ALIASES = {"mesgtoobig": "emailtoolarge"}


# ------------------------------------------------------------------------------------- the split
def families() -> dict[str, dict[str, list[str]]]:
    """corpus -> family -> files (paths relative to the corpus)."""
    out: dict[str, dict[str, list[str]]] = {"sisimai": collections.defaultdict(list), "flufl": collections.defaultdict(list)}
    seen = set()
    for line in (SISIMAI / "expected.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["file"] not in seen:
            seen.add(r["file"])
            out["sisimai"][r["family"]].append(r["file"])
    for name in json.loads((FLUFL / "expected.json").read_text()):
        out["flufl"][name.rsplit("_", 1)[0]].append(name)
    return out


def make_split() -> dict:
    """Per family, files shuffled with a seed of their own: round(n/3) to `check` (a family of one or
    two files goes to `check` with a chance of n/3), the rest to `write`."""
    split = {"seed": SEED, "rule": "per family: shuffled with random.Random(f'{seed}:{corpus}:{family}'), "
             "the first n//3 files (plus one with chance (n%3)/3) to check, the rest to write", "write": {}, "check": {}}
    for corpus, fams in families().items():
        split["write"][corpus], split["check"][corpus] = [], []
        for fam in sorted(fams):
            files = sorted(fams[fam])
            rng = random.Random(f"{SEED}:{corpus}:{fam}")
            rng.shuffle(files)
            k = len(files) // 3 + (1 if rng.random() < (len(files) % 3) / 3 else 0)
            split["check"][corpus] += files[:k]
            split["write"][corpus] += files[k:]
        for part in ("write", "check"):
            split[part][corpus].sort()
    return split


def load_split() -> dict:
    return json.loads(SPLIT.read_text())


# ------------------------------------------------------------------------------------- running
def run_parser(paths: list[Path]) -> dict[str, list[dict]]:
    out = subprocess.run([sys.executable, "-m", "proxy", "parse", "--json", *map(str, paths)],
                         capture_output=True, text=True, cwd=ROOT, check=False).stdout
    rows: dict[str, list[dict]] = collections.defaultdict(list)
    for line in out.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[row["file"]].append(row)
    return rows


def addr(a) -> str:
    return a.strip().strip("<>").strip().lower() if isinstance(a, str) else ""


def bare(m) -> str:
    return m.strip().strip("<>").strip() if isinstance(m, str) else ""


def pseudo(s: str) -> bool:
    p = s.split(".")
    return len(p) == 3 and p[2].isdigit() and ((p[1] == "0" and int(p[2]) >= 900) or p[1] == "9")


def ratio(n, d) -> float:
    return n / d if d else float("nan")


def score_sisimai(files: list[str]) -> dict:
    ref: dict[str, list[dict]] = collections.defaultdict(list)
    for line in (SISIMAI / "expected.jsonl").read_text().splitlines():
        r = json.loads(line)
        ref[r["file"]].append(r)
    files = [f for f in files if not (ref[f][0]["recipient"] is None and ref[f][0].get("confidence") == "unknown")]
    got = run_parser([SISIMAI / f for f in files])
    c = collections.Counter()
    per_reason = collections.defaultdict(collections.Counter)  # reason -> tp/fp/fn
    confusion = collections.Counter()
    rows = []  # disagreements: (weight, file, recipient, what)
    for f in files:
        recs = ref[f]
        negative = recs[0]["recipient"] is None
        cand = {}
        for o in got.get(str(SISIMAI / f), []):
            if o.get("recipient"):
                cand.setdefault(addr(o["recipient"]), o)
        pos = {addr(r["recipient"]): r for r in recs if r["recipient"] and r["kind"] in ("bounce", "feedback")}
        neutral = {addr(r["recipient"]) for r in recs if r["recipient"] and r["kind"] in ("delivered", "vacation")}
        if negative and cand:
            c["nonbounce_reported"] += 1
            rows.append((3, f, ",".join(cand), "not a bounce, reported as one"))
        c["negative_files"] += negative
        for k, r in pos.items():
            o = cand.get(k)
            if o is None:
                c["fn"] += 1
                rows.append((2, f, k, "recipient missed"))
                if r["reason"] not in ("undefined", "onhold"):
                    per_reason[ALIASES.get(r["reason"], r["reason"])]["fn"] += 1
                continue
            c["tp"] += 1
            why = []
            rs, cs = r.get("deliverystatus") or "", (o.get("status") or "").strip()
            if rs:
                c["st_n"] += 1
                ok = cs[:1] == rs[:1] if pseudo(rs) else cs == rs
                c["st_ok"] += ok
                if not ok:
                    why.append(f"status {rs} vs {cs or '-'}")
            rr = ALIASES.get(r["reason"], r["reason"])
            cr = ALIASES.get(o.get("reason") or "", o.get("reason") or "")
            if r["kind"] not in ("feedback", "vacation", "delivered") and rr not in NO_HARDSOFT:
                c["hs_n"] += 1
                want = "hard" if r["hardbounce"] else "soft"
                c["hs_ok"] += o.get("bounce_type") == want
                if o.get("bounce_type") != want:
                    c[f"hs_{want}_as_{o.get('bounce_type')}"] += 1
                    why.append(f"{want} vs {o.get('bounce_type')}")
            if rr and rr not in ("undefined", "onhold"):
                c["rs_n"] += 1
                c["rs_ok"] += cr == rr
                confusion[(rr, cr)] += 1
                if cr == rr:
                    per_reason[rr]["tp"] += 1
                else:
                    per_reason[rr]["fn"] += 1
                    per_reason[cr]["fp"] += 1
                    why.append(f"reason {rr} vs {cr}")
            rm = bare(r.get("messageid"))
            if rm:
                c["mid_n"] += 1
                c["mid_ok"] += bare(o.get("original_message_id")) == rm
                if bare(o.get("original_message_id")) != rm:
                    why.append("message-id")
            if why:
                rows.append((len(why) + ("hard vs soft" in why or "soft vs hard" in why), f, k, "; ".join(why)))
        for k in cand:
            if k not in pos and k not in neutral:
                c["fp"] += 1
                rows.append((2, f, k, "reported but not bounced"))
    p, rc = ratio(c["tp"], c["tp"] + c["fp"]), ratio(c["tp"], c["tp"] + c["fn"])
    return {
        "files": len(files), "precision": p, "recall": rc, "f1": ratio(2 * p * rc, p + rc) if c["tp"] else 0.0,
        "status": ratio(c["st_ok"], c["st_n"]), "hardsoft": ratio(c["hs_ok"], c["hs_n"]),
        "reason": ratio(c["rs_ok"], c["rs_n"]), "msgid": ratio(c["mid_ok"], c["mid_n"]),
        "nonbounce": f"{c['nonbounce_reported']}/{c['negative_files']}",
        "soft_as_hard": c["hs_soft_as_hard"], "hard_as_soft": c["hs_hard_as_soft"],
        "per_reason": per_reason, "confusion": confusion, "rows": sorted(rows, key=lambda r: (-r[0], r[1])),
    }


def score_flufl(files: list[str]) -> dict:
    expected = json.loads((FLUFL / "expected.json").read_text())
    got = run_parser([FLUFL / f for f in files])
    c = collections.Counter()
    for f in files:
        exp = expected[f]
        found = {addr(o["recipient"]) for o in got.get(str(FLUFL / f), []) if o.get("recipient")}
        if exp is None:
            c["none_n"] += 1
            c["none_reported"] += bool(found)
            continue
        want = {addr(a) for a in exp["recipients"]}
        c["n"] += 1
        c["exact"] += found == want
        c["tp"] += len(found & want)
        c["fp"] += len(found - want)
        c["fn"] += len(want - found)
        temp = [o.get("kind") == "delay" or o.get("bounce_type") == "soft" for o in got.get(str(FLUFL / f), [])
                if o.get("recipient") and addr(o["recipient"]) in want]
        if exp.get("temporary") and temp:
            c["temp_n"] += 1
            c["temp_ok"] += all(temp)
    p, r = ratio(c["tp"], c["tp"] + c["fp"]), ratio(c["tp"], c["tp"] + c["fn"])
    return {"files": c["n"], "exact": ratio(c["exact"], c["n"]), "precision": p,
            "f1": ratio(2 * p * r, p + r) if c["tp"] else 0.0, "temporary_soft": f"{c['temp_ok']}/{c['temp_n']}",
            "no_expectation_reported": f"{c['none_reported']}/{c['none_n']}"}


def fmt(x) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("write", "check", "both"), default="both")
    ap.add_argument("-v", "--verbose", action="store_true", help="per reason, confusion matrix, worst rows")
    ap.add_argument("--rows", type=int, default=25, help="how many disagreeing rows to list with -v")
    ap.add_argument("--make-split", action="store_true", help=f"write {SPLIT.name} and stop")
    a = ap.parse_args(argv)
    if not SISIMAI.is_dir():
        print(f"no samples at {SAMPLES}")
        return 1
    if a.make_split:
        SPLIT.write_text(json.dumps(make_split(), indent=1) + "\n")
        print(f"wrote {SPLIT}")
        return 0
    split = load_split()
    parts = ("write", "check") if a.part == "both" else (a.part,)
    print("part   corpus   files  rcpt-P  rcpt-F1 status hard/soft reason msg-id nonbounce soft->hard hard->soft")
    results = {}
    for part in parts:
        s = results[part] = score_sisimai(split[part]["sisimai"])
        print(f"{part:6} sisimai  {s['files']:5}  {fmt(s['precision'])}  {fmt(s['f1'])}   {fmt(s['status'])}  "
              f"{fmt(s['hardsoft'])}     {fmt(s['reason'])}  {fmt(s['msgid'])}  {s['nonbounce']:9} "
              f"{s['soft_as_hard']:10} {s['hard_as_soft']:10}")
        fl = score_flufl(split[part]["flufl"])
        print(f"{part:6} flufl    {fl['files']:5}  {fmt(fl['precision'])}  {fmt(fl['f1'])}   exact {fmt(fl['exact'])}, "
              f"temporary as soft {fl['temporary_soft']}, no-expectation files reported {fl['no_expectation_reported']}")
    if a.verbose:
        for part in parts:
            s = results[part]
            print(f"\n== {part}: per reason (Sisimai's reason vs ours)")
            print("reason            n   precision recall")
            for reason, k in sorted(s["per_reason"].items(), key=lambda kv: -(kv[1]["tp"] + kv[1]["fn"])):
                n = k["tp"] + k["fn"]
                print(f"{reason:16} {n:3}   {fmt(ratio(k['tp'], k['tp'] + k['fp'])):>9} {fmt(ratio(k['tp'], n)):>6}")
            print(f"\n== {part}: confusion (Sisimai -> ours), disagreements only")
            for (want, have), n in sorted(s["confusion"].items(), key=lambda kv: -kv[1]):
                if want != have:
                    print(f"  {n:3}  {want:16} -> {have}")
            print(f"\n== {part}: rows where they disagree most")
            for weight, f, rcpt, what in s["rows"][: a.rows]:
                print(f"  {f}  {rcpt}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

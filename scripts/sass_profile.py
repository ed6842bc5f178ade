#!/usr/bin/env python3
"""Summarises Nsight Compute's per-instruction warp-stall sampling (the source page as CSV,
`ncu -i REPORT --page source --csv --print-source sass`, as gpu_run.sh's sass step writes it)
by source line, as markdown.

    scripts/sass_profile.py CSV[.gz] [--sass NVDISASM_OUT] [--file attention_kernel.h]
                            [--depth 1] [--top 40] [--title TEXT]

The CSV has one row per SASS instruction (address, text, samples by stall reason). With
--sass (``nvdisasm --print-line-info-inline -c`` of the cubins the kernel came from, any number
of functions), the function whose instruction sequence matches the CSV's supplies each
instruction's inline chain (file:line, innermost first), and the samples are grouped by the
outermost frame in --file (--depth 2: the frame inside it) and by that frame with its innermost
one. Always by opcode.
"""
import argparse
import collections
import csv
import gzip
import re
import sys

SAMPLES = "Warp Stall Sampling (All Samples)"
EXECUTED = "Instructions Executed"


def load_csv(path):
    opener = gzip.open if path.endswith(".gz") else open
    kernel, hdr, rows = "", None, []
    with opener(path, "rt", newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            if row[0] == "Kernel Name" and len(row) > 1:
                kernel = row[1]
                continue
            if row[0] == "Address":
                hdr = row
                continue
            if hdr is not None and len(row) == len(hdr):
                rows.append(dict(zip(hdr, row)))
    if not rows:
        raise SystemExit(f"{path}: no instruction rows")
    base = int(rows[0]["Address"], 16)
    for d in rows:
        d["off"] = int(d["Address"], 16) - base
        d["mnemonic"] = mnemonic(d["Source"])
        d["op"] = d["mnemonic"].split(".")[0]  # FFMA.FTZ -> FFMA
    stalls = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
    return kernel, rows, stalls


def mnemonic(text):
    """The instruction with its modifiers (F2FP.F16.F32.PACK_AB), without a predicate guard."""
    t = re.sub(r"^@!?U?P[T0-9]+\s+", "", text.strip())
    return t.split(" ")[0] if t else ""


def load_sass(path):
    """Functions of an nvdisasm listing: name -> list of (offset, mnemonic, [frames])."""
    funcs, name, cur, pending, chain = {}, None, [], [], []
    sec = re.compile(r"^//-+ \.text\.(\S+)\s+-+")
    ins = re.compile(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;?\s*$")
    for line in open(path, errors="replace"):
        m = sec.match(line)
        if m:
            if name:
                funcs[name] = cur
            name, cur, pending, chain = m.group(1), [], [], []
            continue
        s = line.strip()
        if s.startswith("//## File"):
            pending.append(s)
            continue
        m = ins.match(line)
        if m and name:
            if pending:  # a new chain; an instruction without one keeps the previous
                chain = [f"{f.group(1).split('/')[-1]}:{f.group(2)}" for f in
                         (re.search(r'File "([^"]+)", line (\d+)', p) for p in pending) if f]
                pending = []
            cur.append((int(m.group(1), 16), mnemonic(m.group(2)), chain))
    if name:
        funcs[name] = cur
    return funcs


def match_function(funcs, rows):
    # Whole mnemonics: the fp16 and bf16 instantiations differ only in modifiers.
    ops = [d["mnemonic"] for d in rows]
    best = None
    for name, body in funcs.items():
        if len(body) != len(ops):
            continue
        same = sum(a == b[1] for a, b in zip(ops, body))
        if best is None or same > best[1]:
            best = (name, same, body)
    if best is None or best[1] < 0.99 * len(ops):
        return None, None
    return best[0], {off: chain for off, _, chain in best[2]}


def table(title, agg, detail, total, stalls_of, top):
    out = [f"### {title}", "", "| samples | % | instrs executed (M) | where | main stall reasons |",
           "|---|---|---|---|---|"]
    for k, n in agg.most_common(top):
        reasons = ", ".join(f"{s[6:]} {100 * v // max(n, 1)}%"
                            for s, v in stalls_of[k].most_common(3) if v)
        out.append(f"| {n} | {100 * n / total:.1f} | {detail[k] / 1e6:.1f} | {k} | {reasons} |")
    out.append("")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--sass", default=None)
    ap.add_argument("--file", default="attention_kernel.h",
                    help="group by the outermost frame in this file")
    ap.add_argument("--depth", type=int, default=1,
                    help="the depth-th outermost frame in --file (2: inside the outermost call)")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--title", default=None)
    args = ap.parse_args()
    kernel, rows, stalls = load_csv(args.csv)
    total = sum(int(d[SAMPLES]) for d in rows)
    out = [f"## {args.title or kernel}", "", f"Kernel: `{kernel}`", "",
           f"{len(rows)} SASS instructions, {total} warp samples, "
           f"{sum(int(d[EXECUTED]) for d in rows) / 1e6:.1f} M warp instructions executed.", ""]
    reasons = collections.Counter()
    for d in rows:
        for s in stalls:
            reasons[s] += int(d[s])
    out += ["Samples by stall reason: " + ", ".join(
        f"{s[6:]} {100 * v / max(total, 1):.1f}%" for s, v in reasons.most_common() if v), ""]
    chains = None
    if args.sass:
        name, chains = match_function(load_sass(args.sass), rows)
        out += [f"Line info: `{name}`" if name else "Line info: no function of the listing "
                "matches the CSV's instructions (grouped by opcode only)", ""]

    def group(key):
        agg, ex, st = collections.Counter(), collections.Counter(), collections.defaultdict(
            collections.Counter)
        for d in rows:
            k = key(d)
            n = int(d[SAMPLES])
            agg[k] += n
            ex[k] += int(d[EXECUTED])
            for s in stalls:
                st[k][s] += int(d[s])
        return agg, ex, st

    if chains:
        def outer(d):
            ch = chains.get(d["off"], [])
            hits = [c for c in ch if c.startswith(args.file + ":")]
            if not hits:
                return ch[-1] if ch else "?"
            return hits[-args.depth] if len(hits) >= args.depth else hits[0]

        def inner(d):
            ch = chains.get(d["off"], [])
            o = outer(d)
            if o in ch:
                i = ch.index(o)
                below = [c for c in ch[:i] if not re.match(r"(cute|cutlass|.*\.hpp|cmath)", c)]
                return f"{o} < {below[0]}" if below else o
            return ch[0] if ch else "?"

        agg, ex, st = group(outer)
        out += table(f"By line of {args.file} (frame {args.depth} from the outermost)", agg, ex,
                     total, st, args.top)
        agg, ex, st = group(inner)
        out += table("By line, with its innermost frame", agg, ex, total, st, args.top)
    agg, ex, st = group(lambda d: d["op"])
    out += table("By opcode", agg, ex, total, st, min(args.top, 25))
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()

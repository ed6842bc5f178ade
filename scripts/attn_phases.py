#!/usr/bin/env python3
"""Where the attention kernel's time goes, per warpgroup role (a development tool).

Needs the extension built with -DBSK_ATTN_PROFILE=ON (scripts/gpu_run.sh step `phases`): the
kernel then prints, per CTA, the cycles one thread of each warp spent in each phase. The main
tables are each warpgroup's first warp; a second table per warpgroup compares its four warps.
  attn_phases.py run CASE      CASE: dense | dense_causal | sparsek (seed shape; 2 launches)
  attn_phases.py summarize LOG...   one table per log (the last launch's lines of each CTA)
"""
import collections
import sys

SLOTS = 18  # phase_clock.h: kPhaseSlots
WARPS = 4  # phase_clock.h: kPhaseWarps
# (slot, phase) in the order printed; the producer counts KV tiles in slot 9, the consumers KV
# tiles in slot 10 and work tiles in slot 11.
PRODUCER = list(enumerate(["work-tile header", "Q-empty wait", "Q issue", "metadata loads",
                           "K-empty wait", "V-empty wait", "copy issue",
                           "metadata slot (wait, store)", "next-tile wait"]))
CONSUMER = list(enumerate(["Q wait", "K wait", "V wait", "S = QK^T wait", "metadata wait",
                           "mask + softmax + gate", "P V wait", "issue, rescale, convert",
                           "finish (l, LSE, NaN rows)"])) + [
    (12, "next-tile wait"), (13, "iterator + hook (next tile; SparseK: this tile, from its header)"),
    (15, "epilogue: warpgroup sync (stage free)"), (16, "epilogue: O to the stage, sync"),
    (17, "epilogue: stage to global"), (14, "epilogue: fence + Q release"), (9, "loop top")]


def run(case):
    import torch
    from blackwell_sparsek import _C
    B, H, S, D = 16, 96, 4096, 128
    q = torch.randn(B, S, H, D, device="cuda", dtype=torch.float16)
    k, v = torch.randn_like(q), torch.randn_like(q)
    u = torch.randn(B, S, H, device="cuda") + 0.001 * torch.arange(S, device="cuda")[None, :, None]
    out = torch.empty_like(q)
    lse = torch.empty(B, H, S, device="cuda")
    st = torch.cuda.current_stream().cuda_stream
    for _ in range(2):
        if case == "sparsek":
            _C.sparsek_attention_fwd(q, k, v, u, out, lse, 256, 256, None, st)
        else:
            _C.attention_fwd(q, k, v, out, lse, case == "dense_causal", None, st)
        torch.cuda.synchronize()


def summarize(path):
    last = {}
    for line in open(path, errors="replace"):
        f = line.split()
        if len(f) == 4 + SLOTS and f[0] == "BSKPROF":
            last[(int(f[1]), int(f[2]), int(f[3]))] = [int(x) for x in f[4:]]
    if not last:
        print(f"{path}: no BSKPROF lines")
        return
    ctas = sorted({c for c, _, _ in last})
    print(f"## {path}: {len(ctas)} CTAs (per-CTA means; cycles)")

    def mean_of(role, warp):
        rows = [last[(c, role, warp)] for c in ctas if (c, role, warp) in last]
        return [sum(r[i] for r in rows) / max(len(rows), 1) for i in range(SLOTS)]

    for role, names in ((0, PRODUCER), (1, CONSUMER), (2, CONSUMER)):
        means = [mean_of(role, w) for w in range(WARPS)]
        mean = means[0]
        total = sum(mean[i] for i, _ in names)
        if role == 0:
            tiles = mean[9]
            wts = None
        else:
            tiles, wts = mean[10], mean[11]
        who = "producer" if role == 0 else f"consumer warpgroup {role}"
        print(f"\n### {who}, warp 0: {total / 1e6:.2f} M cycles, {tiles:.0f} KV tiles"
              + (f", {wts:.0f} work tiles" if wts else ""))
        print("| phase | cycles | % | per KV tile |" + (" per work tile |" if wts else ""))
        print("|---|---|---|---|" + ("---|" if wts else ""))
        for i, n in names:
            print(f"| {n} | {mean[i] / 1e6:.3f} M | {100 * mean[i] / max(total, 1):.1f} | "
                  f"{mean[i] / max(tiles, 1):.0f} |"
                  + (f" {mean[i] / wts:.0f} |" if wts else ""))
        per = wts if wts else tiles
        unit = "work tile" if wts else "KV tile"
        print(f"\n{who}, by warp (cycles per {unit}):\n")
        print("| phase |" + "".join(f" warp {w} |" for w in range(WARPS)))
        print("|---|" + "---|" * WARPS)
        for i, n in names:
            print(f"| {n} |" + "".join(f" {m[i] / max(per, 1):.0f} |" for m in means))


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "run":
        run(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "summarize":
        for p in sys.argv[2:]:
            summarize(p)
    else:
        sys.exit(__doc__)

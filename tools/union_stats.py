#!/usr/bin/env python3
"""How often the SparseK attention kernel's per-element hooks could be skipped (a development
tool; CPU only, from the float64 reference selection).

For each 128-query tile of a head it takes the gathered part of the tile's union, the selected
keys that are candidates of every row (j <= first row - window), and counts:
  - keys selected by every row of the tile (their membership mask is all ones);
  - keys whose gate is 1 for every row (u_j - tau_last >= 1; tau is non-decreasing in p);
  - 128-key gathered tiles that would need no mask / no gate, with the union in index order
    (as the selection writes it) and with those keys put first.
  tools/union_stats.py [S] [k] [window] [heads] [slope ...]   (defaults: 4096 256 256 4, the
  benchmark's slope 1 / S, plus 0 and 0.01)
"""
import sys

import torch

sys.path.insert(0, __file__.rsplit("/tools/", 1)[0] + "/python")
from blackwell_sparsek.reference import sparsek_operator_ref, sparsek_selection_ref  # noqa: E402

TILE = 128


def stats(S, k, window, heads, slope, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = (torch.randn(1, S, heads, dtype=torch.float64, generator=g)
         + slope * torch.arange(S, dtype=torch.float64)[None, :, None])
    idx, gate = sparsek_selection_ref(u, S, k, window)
    tau = sparsek_operator_ref(u, S, k, window)[0][0]  # [heads, S]
    sel = idx >= 0
    out = dict(pairs_gate1=((gate >= 1.0) & sel).sum().item() / max(sel.sum().item(), 1),
               tiles=0, full=0, sat=0, gtiles=0, mask_free=0, gate_free=0, mask_free_sorted=0,
               gate_free_sorted=0)
    for h in range(heads):
        for t0 in range(0, S, TILE):
            rows = list(range(t0, min(S, t0 + TILE)))
            lim = t0 - window
            if lim < 0:
                continue
            cnt = {}
            for p in rows:
                for j in idx[0, p, h].tolist():
                    if 0 <= j <= lim:
                        cnt[j] = cnt.get(j, 0) + 1
            if not cnt:
                continue
            keys = sorted(cnt)
            t_last = tau[h, rows[-1]].item()
            full = [cnt[j] == len(rows) for j in keys]
            sat = [u[0, j, h].item() - t_last >= 1.0 for j in keys]
            out["tiles"] += 1
            out["full"] += sum(full)
            out["sat"] += sum(sat)
            ng = (len(keys) + TILE - 1) // TILE
            out["gtiles"] += ng
            for t in range(ng):
                part = slice(TILE * t, TILE * (t + 1))
                out["mask_free"] += all(full[part])
                out["gate_free"] += all(sat[part])
            out["mask_free_sorted"] += sum(full) // TILE
            out["gate_free_sorted"] += sum(sat) // TILE
    return out


def main():
    a = sys.argv[1:]
    S = int(a[0]) if len(a) > 0 else 4096
    k = int(a[1]) if len(a) > 1 else 256
    window = int(a[2]) if len(a) > 2 else 256
    heads = int(a[3]) if len(a) > 3 else 4
    slopes = [float(x) for x in a[4:]] or [1.0 / S, 0.0, 0.01]
    print(f"S {S} k {k} window {window} heads {heads}")
    for slope in slopes:
        r = stats(S, k, window, heads, slope)
        n = max(r["tiles"], 1)
        print(f"slope {slope:g}: selected (p, j) pairs with gate 1: {r['pairs_gate1']:.3f}; per "
              f"query tile: {r['full'] / n:.1f} gathered keys selected by every row, "
              f"{r['sat'] / n:.1f} with gate 1 for every row; of {r['gtiles']} gathered tiles, "
              f"index order: {r['mask_free']} need no mask, {r['gate_free']} no gate; those keys "
              f"first: {r['mask_free_sorted']} / {r['gate_free_sorted']}")


if __name__ == "__main__":
    main()

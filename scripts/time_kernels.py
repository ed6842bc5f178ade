#!/usr/bin/env python3
"""Quick timing of the project's kernels against SDPA at one shape (a development tool; the
report is bench/run_bench.py). Prints µs/head and TFLOP/s per case, measured in this process."""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from blackwell_sparsek import _C


def timeit(fn, reps=10, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--H", type=int, default=96)
    ap.add_argument("--S", type=int, default=4096)
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--slope", type=float, default=0.001,
                    help="score slope per key position (the bench uses 1 / S)")
    ap.add_argument("--only", choices=["all", "sparsek", "dense"], default="all")
    ap.add_argument("--no-flash", action="store_true", help="skip the SDPA flash backend")
    ap.add_argument("--kernels", action="store_true",
                    help="also print each CUDA kernel's mean time in the SparseK call (profiler)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    B, H, S, D = a.B, a.H, a.S, a.D
    dt = torch.float16
    q = torch.randn(B, S, H, D, device="cuda", dtype=dt)
    k = torch.randn_like(q)
    v = torch.randn_like(q)
    u = torch.randn(B, S, H, device="cuda") + a.slope * torch.arange(S, device="cuda")[None, :, None]
    out = torch.empty_like(q)
    lse = torch.empty(B, H, S, device="cuda")
    st = torch.cuda.current_stream().cuda_stream
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    flops_dense = 4.0 * B * H * S * S * D
    rows = []

    def add(name, ms, flops):
        rows.append({"impl": name, "ms": ms, "us_per_head": ms * 1e3 / H,
                     "tflops": flops / (ms * 1e-3) / 1e12})
        print(f"{name:28s} {ms:9.3f} ms {ms * 1e3 / H:9.2f} us/head {rows[-1]['tflops']:7.1f} TFLOP/s",
              flush=True)

    for causal in ((False, True) if a.only in ("all", "dense") else ()):
        f = flops_dense / (2 if causal else 1)
        add(f"bsk_dense{'_causal' if causal else ''}",
            timeit(lambda: _C.attention_fwd(q, k, v, out, lse, causal, None, st)), f)
        backends = ((SDPBackend.CUDNN_ATTENTION, "cudnn"), (SDPBackend.FLASH_ATTENTION, "flash"))
        for be, name in backends[:1] if a.no_flash else backends:
            try:
                with sdpa_kernel(be):
                    add(f"sdpa_{name}{'_causal' if causal else ''}",
                        timeit(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)), f)
            except Exception as e:  # backend unavailable
                print(f"sdpa_{name}: {type(e).__name__}: {e}")
    if a.only != "dense":
        time_sparsek(a, q, k, v, u, out, lse, st, add)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"shape": vars(a), "gpu": torch.cuda.get_device_name(), "rows": rows}, fh, indent=1)


def time_sparsek(a, q, k, v, u, out, lse, st, add):
    B, S, H, D = q.shape
    keys = min(a.k, S) + a.window  # approximate keys per query for the FLOP count
    add(f"bsk_sparsek_k{a.k}_w{a.window}",
        timeit(lambda: _C.sparsek_attention_fwd(q, k, v, u, out, lse, a.k, a.window, None, st)),
        4.0 * B * H * S * keys * D)
    if a.kernels:
        from torch.profiler import ProfilerActivity, profile
        reps = 5
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                _C.sparsek_attention_fwd(q, k, v, u, out, lse, a.k, a.window, None, st)
            torch.cuda.synchronize()
        for ev in prof.key_averages():
            if ev.device_type.name == "CUDA" and ev.count >= reps:
                dev_us = getattr(ev, "device_time_total", None) or ev.cuda_time_total
                print(f"  kernel {ev.key[:70]:70s} {dev_us / ev.count:10.1f} us x{ev.count}",
                      flush=True)
    tau = torch.empty(B, H, S, device="cuda")
    tv, ti, na = torch.empty_like(tau), torch.empty_like(tau, dtype=torch.int32), torch.empty_like(tau, dtype=torch.int32)
    add("bsk_select_only", timeit(lambda: _C.sparsek_select(u, S, a.k, a.window, tau, tv, ti, na, st)), 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""`make bench`: the benchmark report of BlackwellSparseK (SPEC section 4).

In one process on one GPU: the environment, the ceilings (copy bandwidth, fp16/bf16 GEMM
8192^3) and the floors derived from them, then per workload the peers (SDPA per backend,
FlexAttention, xFormers, FlashAttention-4) and the project's kernels, each timed with CUDA
events (warm-up, median of repeats) and checked against a float32 reference on a sample of
heads. Output: markdown (printed and written), JSON, PNG chart, under --out-dir as
``<gpu-slug>-<YYYYMMDD>-<shortcommit>{.md,.json,.png}`` (``-quick`` appended with --quick).
The files are rewritten after every row, so an interrupted run still leaves a report.

    python bench/run_bench.py                       # seed + tier-origin + decode (< 5 min)
    python bench/run_bench.py --sweep               # + k / window / S / GQA sweeps
    python bench/run_bench.py --quick               # small smoke shapes
    python bench/run_bench.py --workloads 'sparsek*' --impls 'bsk_*,flex_token_level'

Without a CUDA GPU it says so, runs a CPU smoke check of the references on a tiny shape and
exits with status 2. A peer that is missing is a row "not installed"; a failing measurement
is an "error" row; the project's rows are "kernel not built" when the sm_90a kernels cannot
run (the PyTorch fallback is never timed at these shapes).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _p in (HERE, os.path.join(REPO, "python")):
    if _p not in sys.path:
        sys.path.insert(1 if _p != HERE else 0, _p)

import peers as P  # noqa: E402
import report as R  # noqa: E402
import workloads as W  # noqa: E402

T_START = time.perf_counter()
EXIT_NO_GPU = 2
EXIT_CONTEXT_LOST = 3
# "cuda" for real runs; "cpu" only in the hidden --_dry-run-cpu mode, which exercises the whole
# harness (timing loop, references, FlexAttention masks, report files) on tiny CPU shapes.
DEVICE = "cuda"


def sync(torch) -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def log(msg: str) -> None:
    print(f"[bench {time.perf_counter() - T_START:7.1f}s] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="BlackwellSparseK benchmark report (SPEC section 4).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"),
                    help="where the .md/.json/.png go")
    ap.add_argument("--quick", action="store_true",
                    help="small smoke shapes (B2 H8 S1024; tier shape B2 H8 S512 D64)")
    ap.add_argument("--sweep", action="store_true",
                    help="add the sweeps: k in {64,256,1024}, window in {0,256,1024}, "
                         "S in {4096,16384,65536} (B scaled to keep B*S), GQA")
    ap.add_argument("--no-decode", action="store_true", help="skip the decode section")
    ap.add_argument("--workloads", default="",
                    help="comma list of fnmatch patterns on workload names or ids, e.g. "
                         "'dense_causal,sparsek*' or 'tier_origin/*'")
    ap.add_argument("--impls", default="",
                    help="comma list of fnmatch patterns on implementations, e.g. 'sdpa_*,bsk_*'")
    ap.add_argument("--skip-impls", default="", help="patterns of implementations to skip")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up calls after the first call")
    ap.add_argument("--repeat", type=int, default=15, help="timed calls (median)")
    ap.add_argument("--max-row-seconds", type=float, default=15.0,
                    help="cap on the timed calls of one row (fewer repeats for slow calls)")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds from start after which remaining rows are skipped "
                         "(default 285, or 570 with --sweep)")
    ap.add_argument("--flush-l2", action="store_true",
                    help="write a 256 MB buffer between repeats (outside the timed region)")
    ap.add_argument("--ref-rows", type=int, default=4096,
                    help="correctness sample: the last N query rows (all rows when Sq <= N)")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-preflight", action="store_true",
                    help="do not try the project's kernels in a subprocess first")
    ap.add_argument("--no-chart", action="store_true")
    ap.add_argument("--no-print", action="store_true", help="do not print the markdown")
    ap.add_argument("--_preflight", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_dry-run-cpu", dest="dry_run_cpu", action="store_true",
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.time_budget is None:
        args.time_budget = 570.0 if args.sweep else 285.0
    args.warmup = max(0, args.warmup)
    args.repeat = max(1, args.repeat)
    return args


# ---------------------------------------------------------------------------------------------
# environment
# ---------------------------------------------------------------------------------------------


def _run(cmd, timeout=15):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        return r.stdout.strip() if r.returncode == 0 else None
    except Exception:
        return None


def git_info() -> dict:
    commit = os.environ.get("BSK_GIT_COMMIT") or _run(["git", "rev-parse", "HEAD"])
    dirty = None
    if commit and not os.environ.get("BSK_GIT_COMMIT"):
        st = _run(["git", "status", "--porcelain", "--untracked-files=no"])
        dirty = bool(st) if st is not None else None
    return dict(git_commit=(commit or "unknown") + (" (+ uncommitted changes)" if dirty else ""),
                git_commit_short=commit[:7] if commit else "nogit", git_dirty=dirty)


def driver_version():
    v = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    if v:
        return v.splitlines()[0].strip()
    try:
        with open("/proc/driver/nvidia/version") as f:
            line = f.readline()
        for tok in line.split():
            if tok.count(".") >= 1 and tok.replace(".", "").isdigit():
                return tok
    except Exception:
        pass
    return None


def collect_env(torch, peers: dict, bsk_info: tuple) -> dict:
    env = dict(python=platform.python_version(), hostname=socket.gethostname(),
               torch=torch.__version__, cuda=torch.version.cuda)
    try:
        import triton
        env["triton"] = triton.__version__
    except Exception as e:
        env["triton"] = f"not importable ({type(e).__name__})"
    try:
        env["cudnn"] = str(torch.backends.cudnn.version())
    except Exception:
        env["cudnn"] = None
    if torch.cuda.is_available():
        try:
            p = torch.cuda.get_device_properties(0)
            env.update(gpu_name=p.name, sm_count=p.multi_processor_count,
                       compute_capability=f"{p.major}.{p.minor}",
                       gpu_memory_gb=round(p.total_memory / 2**30, 1))
            l2 = getattr(p, "L2_cache_size", None)
            if l2:
                env["l2_mb"] = round(l2 / 2**20, 1)
        except Exception as e:
            env["gpu_name"] = f"unknown ({e})"
    env["driver"] = driver_version()
    env.update(git_info())
    env["peers"] = {k: (v["version"] or "importable") if v["importable"] else "not installed"
                    for k, v in peers.items()}
    env["peer_details"] = peers
    bsk, status, msg = bsk_info
    env["blackwell_sparsek"] = getattr(bsk, "__version__", None) if bsk else "not importable"
    env["bsk_kernels"] = status + (f" ({msg})" if msg else "")
    if bsk is not None:
        try:
            env["bsk_build_info"] = bsk.build_info()
        except Exception:
            pass
    return env


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------


def cuda_times(torch, fn, warmup: int, repeat: int, flush=None):
    """CUDA-event time (ms) of each of ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    if DEVICE != "cuda":  # dry run: wall clock
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return ts
    torch.cuda.synchronize()
    st = [torch.cuda.Event(enable_timing=True) for _ in range(repeat)]
    en = [torch.cuda.Event(enable_timing=True) for _ in range(repeat)]
    for i in range(repeat):
        if flush is not None:
            flush()
        st[i].record()
        fn()
        en[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(st, en)]


def is_selection_kernel(name: str) -> bool:
    """Whether a CUDA kernel of the SparseK call belongs to its selection (the shared-memory or
    global-memory selection kernels, the global path's key preparation and segmented sort)."""
    return ("select_" in name or "prep_sort_kernel" in name or "global_prep" in name
            or "SegmentedRadixSort" in name)


def selection_ms(torch, fn, reps: int = 3) -> float:
    """The selection kernels' ms per call of ``fn``, from torch.profiler's CUDA kernel times
    over ``reps`` calls (after the timing, so that it never perturbs it)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    sel = 0.0
    for ev in prof.key_averages():
        if ev.device_type.name == "CUDA" and is_selection_kernel(ev.key):
            sel += getattr(ev, "device_time_total", None) or ev.cuda_time_total
    return sel / reps / 1e3


def measure_ceilings(torch, quick: bool) -> dict:
    c: dict = {}
    errs = []
    try:
        nbytes = (256 if quick else 1024) * 2**20
        if DEVICE != "cuda":
            nbytes = 16 * 2**20
        src = torch.empty(nbytes // 2, dtype=torch.float16, device=DEVICE).normal_()
        dst = torch.empty_like(src)
        ts = cuda_times(torch, lambda: dst.copy_(src), 3, 20)
        ms, best = statistics.median(ts), min(ts)
        c.update(copy_bytes_per_s=2 * nbytes / (ms * 1e-3), copy_tbps=2 * nbytes / ms / 1e9,
                 copy_tbps_best=2 * nbytes / best / 1e9, copy_ms=ms,
                 copy_method=f"dst.copy_(src) of {nbytes / 2**20:.0f} MiB, bytes read + "
                             "written, median of 20")
        src = dst = None  # free the buffers
    except Exception as e:
        errs.append(f"copy: {type(e).__name__}: {e}")
    n = 4096 if quick else 8192
    if DEVICE != "cuda":
        n = 256
    for name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        try:
            a = torch.randn((n, n), device=DEVICE, dtype=dt)
            b = torch.randn((n, n), device=DEVICE, dtype=dt)
            out = torch.empty((n, n), device=DEVICE, dtype=dt)
            ts = cuda_times(torch, lambda: torch.matmul(a, b, out=out), 5, 20)
            ms = statistics.median(ts)
            c[f"gemm_{name}_flops_per_s"] = 2 * n ** 3 / (ms * 1e-3)
            c[f"gemm_{name}_tflops"] = 2 * n ** 3 / (ms * 1e-3) / 1e12
            c[f"gemm_{name}_tflops_best"] = 2 * n ** 3 / (min(ts) * 1e-3) / 1e12
            c["gemm_method"] = f"torch.matmul {n}^3, median of 20"
            a = b = out = None
        except Exception as e:
            errs.append(f"gemm {name}: {type(e).__name__}: {e}")
    if errs:
        c["error"] = "; ".join(errs)
    sync(torch)
    empty_cache(torch)
    return c


def empty_cache(torch) -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def context_ok(torch) -> bool:
    """False when the CUDA context is unusable (a sticky error such as an illegal address)."""
    if DEVICE != "cuda":
        return True
    try:
        torch.cuda.synchronize()
        t = torch.ones(1, device="cuda")
        return float((t + 1).item()) == 2.0
    except Exception:
        return False


# ---------------------------------------------------------------------------------------------
# one workload, one implementation
# ---------------------------------------------------------------------------------------------

FLEX_SPARSE = ("flex_token_level", "flex_token_level_flash", "flex_block_packed",
               "flex_block_packed_flash")


class ContextLost(Exception):
    pass


class WorkloadState:
    """Per-workload caches: the float32 references and the FlexAttention block masks."""

    def __init__(self, w, x, args):
        self.w, self.x, self.args = w, x, args
        self.refs: dict = {}
        self.masks: dict = {}
        self.mask_refs: dict = {}
        self.spec = P.sample_spec(w.shape, 2, 2, args.ref_rows)


def reference_for(st: WorkloadState, impl: str):
    """(ref tensor, None) or (None, why) for the correctness check of ``impl``. The
    FlexAttention sparse rows are checked against the float32 reference of their own mask
    without gates (same key set; FlexAttention cannot gate values)."""
    w = st.w
    if impl.startswith(("flex_token_level", "flex_block_packed")):
        kind = impl.replace("_flash", "")
        key = "mask:" + kind
        if key not in st.refs:
            bm = st.masks.get(kind, (None, ""))[0]
            if bm is None:
                return None, "n/a (no mask)"
            mm = st.mask_refs.get(kind) or bm.mask_mod
            t0 = time.perf_counter()
            try:
                st.refs[key] = (P.dense_reference(st.x, False, st.spec, mask_mod=mm), None)
                log(f"  reference ({kind} key set, no gates, float32) in "
                    f"{time.perf_counter() - t0:.2f} s")
            except Exception as e:
                st.refs[key] = (None, f"reference failed: {type(e).__name__}: {e}"[:300])
        return st.refs[key]
    sparse = (w.kind == "sparsek") or (w.kind == "decode" and impl == "bsk_sparsek")
    key = "sparsek" if sparse else "dense"
    if key not in st.refs:
        t0 = time.perf_counter()
        try:
            if sparse:
                st.refs[key] = (P.sparsek_reference(st.x, w.k_select, w.window, st.spec), None)
            else:
                st.refs[key] = (P.dense_reference(st.x, bool(w.causal), st.spec), None)
            log(f"  reference ({key}, float32) in {time.perf_counter() - t0:.2f} s")
        except Exception as e:
            st.refs[key] = (None, f"reference failed: {type(e).__name__}: {e}"[:300])
    return st.refs[key]


def flex_block_mask(st: WorkloadState, impl: str, bsk_ok: bool):
    """(block_mask or None, note) for a FlexAttention row, built once per workload."""
    import torch
    w, x = st.w, st.x
    s = w.shape
    if impl.startswith("flex_dense"):
        return None, ""
    kind = impl.replace("_flash", "")
    if kind in st.masks:
        return st.masks[kind]
    t0 = time.perf_counter()
    note = ""
    if kind == "flex_causal":
        bm = P.build_block_mask(P.causal_mask_mod(s.Sq, s.Sk), 1, 1, s.Sq, s.Sk, DEVICE)
    elif kind == "flex_token_level":
        big = s.B * s.Hkv * s.Sq * s.Sk > (1 << 35)
        tv, ti, how, sel_s = P.sparsek_theta(x.scores, s.Sq, w.k_select, w.window,
                                             prefer_kernel=big and bsk_ok)
        kr, tr = P.sparsek_ranks(x.scores, tv, ti)
        mm = P.sparsek_rank_mask_mod(kr, tr, s.Sq, s.Sk, w.window, s.group)
        bm = P.build_block_mask(mm, s.B, s.H, s.Sq, s.Sk, DEVICE)
        # the correctness reference evaluates the value form (an independent encoding)
        st.mask_refs[kind] = P.sparsek_mask_mod(x.scores.permute(0, 2, 1).contiguous(), tv, ti,
                                                s.Sq, s.Sk, w.window, s.group)
        note = f"selection by {how} in {sel_s:.2f} s, rank-encoded mask_mod; "
    elif kind == "flex_block_packed":
        n = w.k_select + w.window
        bm = P.build_block_mask(P.block_packed_mask_mod(s.Sq, s.Sk, n), 1, 1, s.Sq, s.Sk,
                                DEVICE)
        note = f"{W.block_packed_keys(n)} keys/query in whole 128-blocks; "
    else:
        raise P.Unavailable("n/a", f"unknown FlexAttention variant {impl}")
    sync(torch)
    stats = P.block_mask_stats(bm)
    note += f"block mask built in {time.perf_counter() - t0:.2f} s"
    if stats.get("skipped_fraction") is not None:
        note += f", {100 * stats['skipped_fraction']:.0f}% of blocks skipped"
    st.masks[kind] = (bm, note)
    return st.masks[kind]


def build_fn(st: WorkloadState, impl: str, ctx: dict):
    """(checked callable, timed callable, note). They differ only for the project's rows: the
    checked one turns a fallback to PyTorch into an error (used for the first call, the
    estimate and a final call); the timed one is the bare API call."""
    w, x = st.w, st.x
    if impl.startswith("bsk_"):
        if ctx["bsk_status"] != "ok":
            raise P.Unavailable(ctx["bsk_status"], ctx["bsk_msg"])
        pf = ctx["preflight"].get((w.id, impl))
        if pf is not None:
            raise P.Unavailable(pf[0], pf[1])
        raw = P.build_bsk(impl, w, x, ctx["bsk"])
        return P.guard_kernel(ctx["bsk"], raw), raw, ""
    fn, note = build_peer_fn(st, impl, ctx)
    return fn, fn, note


def build_peer_fn(st: WorkloadState, impl: str, ctx: dict):
    """(callable, note) of a peer."""
    w, x = st.w, st.x
    if impl in P._SDPA_BACKENDS:
        return P.build_sdpa(impl, w, x), ""
    if impl == "fa4":
        return P.build_fa4(w, x, ctx["peers"]), ""
    if impl == "xformers":
        return P.build_xformers(w, x, ctx["peers"]), ""
    if impl.startswith("flex_"):
        if not ctx["peers"].get("flex_attention", {}).get("importable"):
            raise P.Unavailable("not installed", "FlexAttention is not importable")
        if impl.endswith("_flash") and not ctx["peers"].get("flash_attn_4", {}).get("importable"):
            raise P.Unavailable("not installed", "FLASH backend needs flash-attn-4")
        try:
            bm, note = flex_block_mask(st, impl, ctx["bsk_status"] == "ok")
        except P.Unavailable:
            raise
        except Exception as e:
            raise RuntimeError(f"block mask construction failed: {type(e).__name__}: {e}")
        if impl.startswith("flex_token_level"):
            note = "same key set, no gates (checked vs ungated reference); " + note
        elif impl.startswith("flex_block_packed"):
            note = "checked vs its own mask; " + note
        return P.build_flex(impl, w, x, ctx["peers"], bm), note
    raise P.Unavailable("n/a", f"unknown implementation {impl}")


def run_impl(torch, st: WorkloadState, impl: str, ctx: dict, budget_end: float) -> dict:
    args = st.args
    w = st.w
    extra = {}
    try:
        fn, timed_fn, note = build_fn(st, impl, ctx)
        extra["note"] = note or None
        t0 = time.perf_counter()
        out = fn()
        sync(torch)
        extra["first_call_s"] = time.perf_counter() - t0
        ref, why = reference_for(st, impl)
        if ref is not None:
            try:
                rtol, atol = R.tolerance(w.shape.dtype)
                extra.update(P.compare(out, ref, st.spec, rtol=rtol, atol=atol))
            except Exception as e:  # a layout surprise must not cost the timing
                extra["check"] = f"compare failed: {type(e).__name__}: {e}"[:300]
        else:
            extra["check"] = why
        del out
        t0 = time.perf_counter()
        fn()
        sync(torch)
        est = max(time.perf_counter() - t0, 1e-6)
        warm = max(0, args.warmup - 1)
        reps = args.repeat
        cap = min(args.max_row_seconds, max(0.0, budget_end - time.perf_counter()))
        if est * (warm + reps) > cap:
            warm = 0
            reps = max(1, min(reps, int(cap / est)))
        flush = ctx.get("flush")
        before = P._ref_calls(ctx.get("bsk"))
        ts = cuda_times(torch, timed_fn, warm, reps, flush)
        ms = statistics.median(ts)
        extra.update(times_ms=ts, repeats=reps, warmup=warm + 1)
        if impl.startswith("bsk_"):
            if P._ref_calls(ctx.get("bsk")) != before:
                raise P.Unavailable("fallback", "the PyTorch implementation ran during the "
                                                "timed calls (timing discarded)")
            fn()  # one more checked call: still the kernel after timing
            if impl == "bsk_sparsek" and DEVICE == "cuda":
                # What the selection costs (issue: under 10% of the call at the seed shape).
                try:
                    sel = selection_ms(torch, timed_fn)
                    extra.update(selection_ms=sel, selection_share=sel / ms)
                    split = (f"selection kernels {sel:.3g} ms, {100 * sel / ms:.0f}% of the "
                             "call (torch.profiler, 3 calls)")
                except Exception as e:  # noqa: BLE001 - the split is extra, the row stands
                    split = f"selection split unavailable: {type(e).__name__}: {e}"[:200]
                extra["note"] = "; ".join(x for x in (extra.get("note"), split) if x)
        row = R.make_row(w, impl, R.STATUS_OK, ms, **extra)
    except P.Unavailable as e:
        row = R.make_row(w, impl, e.status, None, error=e.message or None, **extra)
    except NotImplementedError as e:
        row = R.make_row(w, impl, "not implemented", None, error=str(e), **extra)
    except Exception as e:  # noqa: BLE001 - one failure is one error row
        msg = f"{type(e).__name__}: {e}"
        if isinstance(e, getattr(torch.cuda, "OutOfMemoryError", ())):
            msg = "out of memory: " + str(e).splitlines()[0]
        log(f"  {impl} failed: {msg[:500]}")
        tb = traceback.format_exc().strip().splitlines()
        print("\n".join("    " + t for t in tb[-4:]), file=sys.stderr, flush=True)
        row = R.make_row(w, impl, "error", None, error=msg[:2000], **extra)
        empty_cache(torch)
        if not context_ok(torch):
            raise ContextLost(f"{w.id} {impl}: {msg[:300]}")
    return row


def progress(row: dict) -> None:
    if R.is_measured(row):
        chk = row.get("allclose")
        chk = "" if chk is None else ("  allclose=yes" if chk else
                                      f"  allclose=NO (max err {row['max_abs_err']:.3g})")
        log(f"  {row['impl']:<24} {row['ms']:10.3f} ms  {row['us_per_head']:9.2f} µs/head  "
            f"{row['tflops']:7.1f} TFLOP/s  {row['tbps']:6.2f} TB/s{chk}  "
            f"(first call {row.get('first_call_s', 0):.1f} s, {row.get('repeats')} reps)")
    else:
        err = (row.get("error") or "").splitlines()
        log(f"  {row['impl']:<24} {row['status']}" + (f": {err[-1][:200]}" if err else ""))


# ---------------------------------------------------------------------------------------------
# preflight: the project's kernels once each, in a subprocess (a crash or hang there costs
# the rows of that kernel, not the whole run)
# ---------------------------------------------------------------------------------------------


def _preflight_items(workloads):
    items = []
    for w in workloads:
        for impl in w.impls:
            if impl.startswith("bsk_"):
                items.append(dict(id=w.id, impl=impl, workload=dict(
                    name=w.name, kind=w.kind, section=w.section, shape=w.shape.as_dict(),
                    causal=w.causal, k_select=w.k_select, window=w.window)))
    return items


def preflight_child(path: str) -> int:
    import torch
    with open(path) as f:
        items = json.load(f)
    bsk, status, msg = P.bsk_state()
    if status != "ok":
        for i, _ in enumerate(items):
            print(json.dumps({"start": i}), flush=True)
            print(json.dumps({"done": i, "status": status, "error": msg}), flush=True)
        return 0
    cache = {}
    for i, it in enumerate(items):
        print(json.dumps({"start": i}), flush=True)
        d = dict(it["workload"])
        d["shape"] = W.Shape(**d["shape"])
        w = W.Workload(**d)
        res = {"done": i, "status": "ok"}
        try:
            key = W.shape_key(w.shape)
            if key not in cache:
                cache.clear()
                torch.cuda.empty_cache()
                cache[key] = P.make_inputs(w.shape, "cuda", seed=0)
            fn = P.guard_kernel(bsk, P.build_bsk(it["impl"], w, cache[key], bsk))
            out = fn()
            torch.cuda.synchronize()
            if not bool(torch.isfinite(out).all()):
                res["note"] = "non-finite values in the output"
            del out
        except P.Unavailable as e:
            res.update(status=e.status, error=e.message)
        except Exception as e:
            res.update(status="error", error=f"{type(e).__name__}: {e}"[:1000])
            if not context_ok(torch):
                res["context_lost"] = True
                print(json.dumps(res), flush=True)
                return EXIT_CONTEXT_LOST
        print(json.dumps(res), flush=True)
    return 0


def _run_child(cmd, start_timeout: float, item_timeout: float):
    """Run the preflight child; returns (stdout lines, stderr text, exit code or None, hung).
    The child prints {"start": i} before and {"done": i, ...} after each call; it is killed
    when it does not start within ``start_timeout`` s or one call takes ``item_timeout`` s."""
    import queue
    import threading
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    q: "queue.Queue" = queue.Queue()
    err: list = []
    t_out = threading.Thread(target=lambda: [q.put(ln) for ln in proc.stdout] + [q.put(None)],
                             daemon=True)
    t_err = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    t_out.start()
    t_err.start()
    lines, hung = [], False
    deadline = time.perf_counter() + start_timeout
    while True:
        try:
            ln = q.get(timeout=max(0.05, deadline - time.perf_counter()))
        except queue.Empty:
            if time.perf_counter() >= deadline:
                hung = True
                proc.kill()
                break
            continue
        if ln is None:
            break
        lines.append(ln)
        if ln.startswith('{"start"'):
            deadline = time.perf_counter() + item_timeout
        elif ln.startswith('{"done"'):
            deadline = time.perf_counter() + item_timeout  # next start (inputs of a new shape)
    try:
        rc = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = None
    t_err.join(timeout=5)
    return lines, "".join(err), rc, hung


def run_preflight(workloads, start_timeout: float = 180.0, item_timeout: float = 90.0) -> dict:
    """{(workload id, impl): (status, message)} for the project's rows that must not be timed
    (crash, hang, error, fallback); rows that passed are absent. Each call of the project's
    API runs once in a child process; a crash or hang costs that row only (the remaining calls
    run in a new child, at most 3 rounds)."""
    items = _preflight_items(workloads)
    result: dict = {}
    remaining = list(items)
    for attempt in range(3):
        if not remaining:
            break
        fd, path = tempfile.mkstemp(prefix="bsk-preflight-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(remaining, f)
        t0 = time.perf_counter()
        try:
            lines, stderr, rc, hung = _run_child(
                [sys.executable, os.path.abspath(__file__), "--_preflight", path],
                start_timeout, item_timeout)
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass
        started, done = set(), {}
        for line in lines:
            try:
                d = json.loads(line)
            except Exception:
                continue
            if "start" in d:
                started.add(d["start"])
            elif "done" in d:
                done[d["done"]] = d
        log(f"preflight round {attempt + 1}: {len(done)}/{len(remaining)} calls done in "
            f"{time.perf_counter() - t0:.1f} s (exit {rc}{', killed: hang' if hung else ''})")
        if not started:
            tail = " | ".join(stderr.strip().splitlines()[-3:])
            log(f"preflight did not start (exit {rc}): {tail[:300]}; the project's rows run "
                "unchecked in this process")
            return result
        tail = " | ".join(stderr.strip().splitlines()[-2:])[:300]
        for i, it in enumerate(remaining):
            key = (it["id"], it["impl"])
            if i in done:
                d = done[i]
                if d.get("status") != "ok":
                    result[key] = (d["status"], d.get("error") or "")
                if d.get("context_lost"):
                    result[key] = ("error", "CUDA context lost in preflight: "
                                   + (d.get("error") or ""))
            elif i in started:
                result[key] = ("error", f"hung in preflight (no result in {item_timeout:.0f} s)"
                               if hung else f"crashed the preflight process (exit {rc}): {tail}")
        last = max(started)
        remaining = [it for i, it in enumerate(remaining) if i > last and i not in done]
    for it in remaining:
        result[(it["id"], it["impl"])] = ("skipped", "not run: preflight incomplete")
    return result


# ---------------------------------------------------------------------------------------------
# no GPU
# ---------------------------------------------------------------------------------------------


def cpu_smoke() -> bool:
    """The CPU part that can run anywhere: the references on a tiny shape and the key
    counting against the reference selection. Returns True when everything agrees; every
    check that does not is named on a line of its own ("  FAILED: ...")."""
    import torch
    failed = []
    try:
        from blackwell_sparsek import reference as ref
    except Exception as e:
        print(f"  FAILED: blackwell_sparsek.reference does not import: {type(e).__name__}: {e}")
        return False
    g = torch.Generator().manual_seed(0)
    B, S, H, D = 1, 96, 2, 16
    shape = W.Shape(B, H, H, S, S, D, "float32")
    q, k, v = (torch.randn(B, S, H, D, generator=g) for _ in range(3))
    scores = torch.randn(B, S, H, generator=g)
    x = P.Inputs(q, k, v, scores, D ** -0.5)
    spec = P.sample_spec(shape, 1, 2, None)
    # The spec's rule, against float64: each float32 result's error at most twice that of
    # reference.attention_ref in float32, plus 1e-5. (At ~1e-7 on x86 CPUs; the rule also holds
    # where the CPU's float32 matmul is less accurate. A wrong mask or gate is off by ~0.1.)
    o64, _ = ref.attention_ref(q.double(), k.double(), v.double(), True, D ** -0.5)
    o_ref, _ = ref.attention_ref(q, k, v, True, D ** -0.5)
    base = float((o_ref.double() - o64).abs().max())
    tol = 2 * base + 1e-5
    print(f"  reference.attention_ref float32 vs float64: max err {base:.2e} (tolerance below: "
          f"{tol:.2e})")
    dense = P.dense_reference(x, True, spec)
    e1 = float((dense.double() - o64).abs().max())
    print(f"  dense causal: bench float32 reference vs float64: max err {e1:.2e}")
    if not e1 <= tol:
        failed.append(f"dense causal max err {e1:.2e} (tolerance {tol:.2e})")
    o_all, _ = ref.sparsek_attention_ref(q, k, v, scores, S, 16)
    e2 = float((o_all.double() - o64).abs().max())
    print(f"  sparsek k >= S equals dense causal: max err {e2:.2e} vs float64")
    if not e2 <= tol:
        failed.append(f"sparsek k >= S vs dense causal max err {e2:.2e} (tolerance {tol:.2e})")
    for ks, win in ((8, 8), (8, 0), (0, 8), (200, 4)):
        idx, _ = ref.sparsek_selection_ref(scores, S, ks, win)
        n_sel = int((idx >= 0).sum()) // (B * H) if ks > 0 else 0   # per (batch, head)
        n_win = sum(min(win, p + 1) for p in range(S)) if win > 0 else 0
        got = W.sparsek_keys_total(S, S, ks, win)
        print(f"  keys counted k={ks} window={win}: selection {n_sel} + window {n_win} = "
              f"{n_sel + n_win}, formula {got}")
        if n_sel + n_win != got:
            failed.append(f"keys counted k={ks} window={win}: {n_sel + n_win} != formula {got}")
    for f in failed:
        print(f"  FAILED: {f}")
    return not failed


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

STATIC_NOTES = [
    "FlexAttention token-level rows (flex_token_level*): the same SparseK key set per query "
    "as a token-level mask_mod (window + {j in C_p : (u_j, j) >= theta_p}); value gating "
    "cannot be expressed in a mask, so FlexAttention gets the same key set, no gates, and is "
    "checked against a float32 reference of that key set without gates. The mask_mod compares "
    "integer ranks (key_rank[b, h, j] <= theta_rank[b, h, p], the order of (u_j, j) "
    "descending; 13% faster on an H100 than comparing (u_j, j) with (theta_val, theta_idx) "
    "directly, same output); the block mask is prebuilt (its construction time is in the "
    "note, not in the timing).",
    "flex_block_packed*: the same number of keys per query (k + window, rounded up to whole "
    "128-blocks) packed into full blocks: the best case for a block-sparse kernel. Its "
    "TFLOP/s counts its own keys.",
    "FlexAttention runs as torch.compile(flex_attention, dynamic=False); the first call "
    "(compilation) is excluded from the timing. *_flash rows use kernel_options "
    "{'BACKEND': 'FLASH'} and need flash-attn-4.",
    "vs SDPA default: SDPA with the default backend choice on the same workload; for SparseK "
    "rows, SDPA default dense causal at the same shape.",
    "The project's rows call the public API (blackwell_sparsek.attention / "
    "sparsek_attention; SparseK selection included) and are timed only when the sm_90a "
    "kernels run: a fallback to the PyTorch implementation is reported, never timed.",
    "I/O floor counts q, k, v read once and o written once (the SparseK scores, 4 bytes per "
    "key and kv head, are not counted) at the copy bandwidth (bytes read + written). A "
    "read-dominated workload (decode) can stream faster than a copy, so its x floor can be "
    "slightly below 1.",
]


def dry_run_workload(w):
    """The workload at a tiny CPU shape (same kind, parameters scaled down)."""
    s = w.shape
    hkv = 1 if s.Hkv != s.H else 2
    h = 2 if hkv == 2 else 4
    sk = 256 if s.Sk >= 256 else s.Sk
    sq = 1 if s.Sq == 1 else sk
    k = None if w.k_select is None else min(w.k_select, 32)
    win = None if w.window is None else min(w.window, 32)
    return W.Workload(w.name, w.kind, w.section, W.Shape(1, h, hkv, sq, sk, 64, "float32"),
                      w.causal, k, win, w.impls, w.note)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._preflight:
        return preflight_child(args._preflight)

    try:
        import torch
    except Exception as e:
        print(f"bench: torch does not import ({type(e).__name__}: {e}); nothing to measure.",
              file=sys.stderr)
        return EXIT_NO_GPU
    global DEVICE
    if args.dry_run_cpu:
        DEVICE = "cpu"
    elif not torch.cuda.is_available():
        print("bench: no CUDA GPU is available. `make bench` measures on an NVIDIA H100/H200 "
              "(sm_90); no report is written.\nRunning the CPU smoke check of the references "
              "on a tiny shape instead:", flush=True)
        ok = cpu_smoke()
        print(f"CPU smoke check {'passed' if ok else 'FAILED'}. Exit status {EXIT_NO_GPU} "
              "(no GPU).", flush=True)
        return EXIT_NO_GPU

    torch.backends.cuda.matmul.allow_tf32 = False
    budget_end = T_START + args.time_budget
    peers = P.peer_availability()
    bsk_info = P.bsk_state()
    env = collect_env(torch, peers, bsk_info)
    log(f"GPU {env.get('gpu_name')} ({env.get('sm_count')} SMs), torch {env['torch']}, "
        f"CUDA {env['cuda']}, commit {env['git_commit']}")
    log("peers: " + ", ".join(f"{k}={v}" for k, v in env["peers"].items())
        + f"; project kernels: {env['bsk_kernels']}")
    cap = torch.cuda.get_device_capability(0) if DEVICE == "cuda" else (9, 0)
    if DEVICE != "cuda":
        env["gpu_name"] = "CPU dry run"
        log("DRY RUN on CPU (tiny shapes, wall-clock timing): a test of the harness only")
    if cap != (9, 0):
        log(f"warning: sm_{cap[0]}{cap[1]} is not Hopper; the figures are not comparable with "
            "the spec's H100 figures")

    workloads = W.filter_workloads(
        W.build_workloads(quick=args.quick, sweep=args.sweep, decode=not args.no_decode,
                          dtype=args.dtype),
        args.workloads, args.impls, args.skip_impls)
    if DEVICE != "cuda":
        workloads = [dry_run_workload(w) for w in workloads]
    if not workloads:
        print("bench: no workload left after --workloads/--impls/--skip-impls", file=sys.stderr)
        return 1
    n_rows = sum(len(w.impls) for w in workloads)
    log(f"{len(workloads)} workloads, {n_rows} rows; budget {args.time_budget:.0f} s")

    stem = R.output_stem(env, suffix="-dryrun" if DEVICE != "cuda" else
                         ("-quick" if args.quick else ("-sweep" if args.sweep else "")))
    doc = dict(schema_version=R.SCHEMA_VERSION,
               generated_utc=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               env=env, config=dict(argv=sys.argv[1:], quick=args.quick, sweep=args.sweep,
                                    warmup=args.warmup, repeat=args.repeat,
                                    max_row_seconds=args.max_row_seconds,
                                    time_budget_s=args.time_budget, flush_l2=args.flush_l2,
                                    ref_rows=args.ref_rows, dtype=args.dtype, seed=args.seed,
                                    tolerances=R.TOLERANCES),
               ceilings={}, floors={}, results=[], notes=list(STATIC_NOTES),
               partial="run in progress")
    paths = {}

    def save(chart=False):
        nonlocal paths
        try:
            R.finalize(doc, workloads)
            paths = R.write_outputs(doc, args.out_dir, stem, chart=chart and not args.no_chart)
        except Exception as e:
            log(f"writing the report failed: {type(e).__name__}: {e}")

    exit_code = 0
    try:
        log("ceilings ...")
        doc["ceilings"] = measure_ceilings(torch, args.quick)
        c = doc["ceilings"]
        log(f"ceilings: copy {R.fmt(c.get('copy_tbps'))} TB/s, fp16 GEMM "
            f"{R.fmt(c.get('gemm_fp16_tflops'))} TFLOP/s, bf16 GEMM "
            f"{R.fmt(c.get('gemm_bf16_tflops'))} TFLOP/s")
        save()

        preflight = {}
        if bsk_info[1] == "ok" and not args.no_preflight and DEVICE == "cuda" \
                and _preflight_items(workloads):
            n = len(_preflight_items(workloads))
            log(f"preflight: the project's {n} calls once each in a child process ...")
            preflight = run_preflight(workloads)
            for (wid, impl), (st, msg) in sorted(preflight.items()):
                log(f"preflight: {wid} {impl}: {st}: {msg[:200]}")
        ctx = dict(peers=peers, bsk=bsk_info[0], bsk_status=bsk_info[1], bsk_msg=bsk_info[2],
                   preflight=preflight, flush=None)
        if DEVICE != "cuda":
            ctx.update(bsk_status="kernel not built", bsk_msg="CPU dry run")
        elif bsk_info[1] != "ok":
            doc["notes"].append(f"Project kernels: {bsk_info[1]} ({bsk_info[2]}).")
        if args.flush_l2:
            buf = torch.empty(256 * 2**20, dtype=torch.uint8, device=DEVICE)
            ctx["flush"] = lambda: buf.zero_()

        inputs_key, x = None, None
        lost = None
        for wi, w in enumerate(workloads):
            if lost:
                break
            log(f"workload {w.id}: {w.describe()}")
            key = W.shape_key(w.shape)
            if key != inputs_key:
                x = None
                empty_cache(torch)
                try:
                    x = P.make_inputs(w.shape, DEVICE, seed=args.seed)
                    inputs_key = key
                except Exception as e:
                    inputs_key = None
                    msg = f"inputs: {type(e).__name__}: {e}"
                    for impl in w.impls:
                        doc["results"].append(R.make_row(w, impl, "error", None, error=msg))
                        progress(doc["results"][-1])
                    save()
                    continue
            st = WorkloadState(w, x, args)
            for impl in w.impls:
                if time.perf_counter() > budget_end:
                    row = R.make_row(w, impl, "skipped", None,
                                     error=f"time budget of {args.time_budget:.0f} s spent")
                else:
                    try:
                        row = run_impl(torch, st, impl, ctx, budget_end)
                    except ContextLost as e:
                        lost = str(e)
                        row = R.make_row(w, impl, "error", None,
                                         error=f"CUDA context lost: {lost}")
                doc["results"].append(row)
                progress(row)
                save()
                if lost:
                    break
            del st
        if lost:
            done = {(r["workload_id"], r["impl"]) for r in doc["results"]}
            for w in workloads:
                for impl in w.impls:
                    if (w.id, impl) not in done:
                        doc["results"].append(R.make_row(
                            w, impl, "skipped", None,
                            error=f"not run: the CUDA context was lost ({lost[:200]})"))
            doc["notes"].append(f"The run stopped early: CUDA context lost at {lost}.")
            exit_code = EXIT_CONTEXT_LOST
        doc.pop("partial", None)
    except KeyboardInterrupt:
        doc["partial"] = "interrupted"
        exit_code = 130
    except Exception as e:  # the harness itself failed: keep what was measured
        doc["partial"] = f"harness error: {type(e).__name__}: {e}"
        traceback.print_exc()
        exit_code = 1
    finally:
        save(chart=True)

    if not args.no_print:
        try:
            print(R.render_markdown(doc), flush=True)
        except Exception as e:
            log(f"rendering failed: {e}")
    for k, p in sorted(paths.items()):
        log(f"wrote {k}: {p}")
    schema = R.validate_doc(json.loads(R.to_json(doc)))
    if schema:
        log("report schema problems: " + "; ".join(schema[:5]))
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

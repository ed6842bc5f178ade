"""The benchmark report: floors, derived metrics, the tier table, the targets, and the
markdown / JSON / PNG outputs. Pure Python (matplotlib only for the chart); no GPU, no torch.

A result row is a plain dict (one implementation on one workload)::

    {"workload": "dense_causal", "workload_id": "seed/dense_causal", "section": "seed",
     "impl": "sdpa_cudnn", "shape": {"B":..,"H":..,"Hkv":..,"Sq":..,"Sk":..,"D":..,
     "dtype":..,"causal":..,"k_select":..,"window":..}, "status": "ok" | "error" |
     "not installed" | "not implemented" | "kernel not built" | "fallback" | "skipped" | "n/a",
     "ms", "times_ms", "us_per_head", "tflops", "tbps", "flops", "io_bytes",
     "speedup_vs_sdpa_default", "x_floor", "allclose", "max_abs_err", "mean_abs_err",
     "error", "note", ...}

Every number is None when it was not measured. The tier and target logic never marks a
tier or target reached unless the row was measured (status "ok").
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import tempfile
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from workloads import Workload, attention_flops, impl_keys_total, io_bytes

SCHEMA_VERSION = 1
# Correctness tolerances per dtype (rtol, atol): about the dtype's machine epsilon and twice it,
# so that an output rounded to the dtype passes and a wrong one does not (bfloat16's epsilon is 8x
# float16's: its rounding alone exceeds the float16 bound). float32 (the CPU dry run) keeps the
# float16 bounds.
TOLERANCES = {"float16": (1e-3, 2e-3), "bfloat16": (8e-3, 1.6e-2), "float32": (1e-3, 2e-3)}


def tolerance(dtype: str) -> Tuple[float, float]:
    """(rtol, atol) of the correctness check for outputs of ``dtype``."""
    if dtype not in TOLERANCES:
        raise ValueError(f"tolerance: dtype must be one of {sorted(TOLERANCES)}, got {dtype!r}")
    return TOLERANCES[dtype]

# (name, threshold in µs/head, inclusive): Tier 1 <= 3.820, Tier 2 < 3.0, Tier 3 < 2.0
TIERS: Tuple[Tuple[str, float, bool], ...] = (("Tier 1", 3.820, True), ("Tier 2", 3.0, False),
                                               ("Tier 3", 2.0, False))
# project kernel -> the workload it runs (by name; sparsek: whatever sparsek workload the
# section holds)
PROJECT_ROWS = (("bsk_dense", "dense"), ("bsk_dense_causal", "dense_causal"),
                ("bsk_sparsek", "sparsek"))
TIER_SECTIONS = (("seed", "seed shape"), ("tier_origin", "tier-origin shape"))

STATUS_OK = "ok"


# ---------------------------------------------------------------------------------------------
# floors and per-row metrics
# ---------------------------------------------------------------------------------------------


def gemm_rate_for(ceilings: dict, dtype: str) -> Optional[float]:
    """GEMM FLOP/s measured for ``dtype`` (fp16 rate when that dtype was not measured)."""
    key = {"bfloat16": "gemm_bf16_flops_per_s"}.get(dtype, "gemm_fp16_flops_per_s")
    return ceilings.get(key) or ceilings.get("gemm_fp16_flops_per_s")


def floor_for(flops: int, nbytes: int, H: int, bw_bytes_per_s: Optional[float],
              gemm_flops_per_s: Optional[float]) -> dict:
    """I/O floor = bytes / bandwidth, compute floor = useful FLOPs / GEMM rate; the floor is
    the larger of the two (both in ms and µs/head)."""
    io_ms = nbytes / bw_bytes_per_s * 1e3 if bw_bytes_per_s else None
    comp_ms = flops / gemm_flops_per_s * 1e3 if gemm_flops_per_s else None
    cands = [x for x in (io_ms, comp_ms) if x is not None]
    floor_ms = max(cands) if cands else None
    bound = None
    if io_ms is not None and comp_ms is not None:
        bound = "I/O" if io_ms >= comp_ms else "compute"
    per_head = (lambda ms: None if ms is None else ms * 1e3 / H)
    return dict(flops=int(flops), io_bytes=int(nbytes), io_floor_ms=io_ms,
                compute_floor_ms=comp_ms, floor_ms=floor_ms, bound=bound,
                io_floor_us_per_head=per_head(io_ms),
                compute_floor_us_per_head=per_head(comp_ms),
                floor_us_per_head=per_head(floor_ms))


def compute_floors(workloads: Iterable[Workload], ceilings: dict) -> Dict[str, dict]:
    bw = ceilings.get("copy_bytes_per_s")
    out = {}
    for w in workloads:
        f = floor_for(w.flops(), w.io_bytes(), w.shape.H, bw,
                      gemm_rate_for(ceilings, w.shape.dtype))
        f.update(workload=w.name, section=w.section, shape=w.shape.as_dict(),
                 keys_per_query=w.keys_total() / max(w.shape.Sq, 1))
        out[w.id] = f
    return out


def row_shape(w: Workload) -> dict:
    d = w.shape.as_dict()
    d.update(causal=bool(w.causal or w.kind == "sparsek"), k_select=w.k_select,
             window=w.window)
    return d


def make_row(w: Workload, impl: str, status: str = STATUS_OK, ms: Optional[float] = None,
             **extra) -> dict:
    """A result row with the per-row metrics derived from ``ms`` (None when not measured):
    µs/head = ms * 1000 / H, TFLOP/s on the useful FLOPs of what ``impl`` computes, TB/s on
    q/k/v/o bytes."""
    flops = attention_flops(w.shape, impl_keys_total(w, impl))
    nbytes = io_bytes(w.shape)
    ok = status == STATUS_OK and ms is not None and ms > 0 and math.isfinite(ms)
    row = dict(workload=w.name, workload_id=w.id, section=w.section, impl=impl,
               shape=row_shape(w), status=status, ms=ms if ok else None,
               us_per_head=ms * 1e3 / w.shape.H if ok else None,
               tflops=flops / (ms * 1e-3) / 1e12 if ok else None,
               tbps=nbytes / (ms * 1e-3) / 1e12 if ok else None,
               flops=flops, io_bytes=nbytes, speedup_vs_sdpa_default=None, x_floor=None,
               allclose=None, max_abs_err=None, mean_abs_err=None, error=None, note=None,
               selection_ms=None, selection_share=None)
    row.update(extra)
    return row


def is_measured(row: Optional[dict]) -> bool:
    return bool(row) and row.get("status") == STATUS_OK and row.get("ms") is not None


def _causal_baselines(rows: Sequence[dict]) -> Dict[Tuple, dict]:
    """shape key -> the measured sdpa_default row of a causal dense workload at that shape."""
    out = {}
    for r in rows:
        if r["impl"] == "sdpa_default" and is_measured(r) and r["shape"].get("causal") \
                and r["shape"].get("k_select") is None:
            out.setdefault(_row_shape_key(r), r)
    return out


def _row_shape_key(r: dict) -> Tuple:
    s = r["shape"]
    return (s["B"], s["H"], s["Hkv"], s["Sq"], s["Sk"], s["D"], s["dtype"])


def attach_derived(rows: List[dict], floors: Dict[str, dict]) -> List[dict]:
    """Fill ``speedup_vs_sdpa_default`` (SDPA default of the same workload; for SparseK rows,
    SDPA default dense causal at the same shape) and ``x_floor`` (ms / floor ms). In place."""
    by_wl = {}
    for r in rows:
        if r["impl"] == "sdpa_default" and is_measured(r):
            by_wl[r["workload_id"]] = r
    causal = _causal_baselines(rows)
    for r in rows:
        r["speedup_vs_sdpa_default"] = None
        r["x_floor"] = None
        r.pop("speedup_reference", None)
        if not is_measured(r):
            continue
        base = by_wl.get(r["workload_id"])
        if base is None and r["shape"].get("k_select") is not None \
                and r["shape"]["Sq"] == r["shape"]["Sk"]:
            base = causal.get(_row_shape_key(r))
        if base is not None:
            r["speedup_vs_sdpa_default"] = base["ms"] / r["ms"]
            r["speedup_reference"] = base["workload_id"]
        f = floors.get(r["workload_id"])
        if f and f.get("floor_ms"):
            r["x_floor"] = r["ms"] / f["floor_ms"]
    return rows


def find_row(rows: Sequence[dict], workload_id: str, impl: str) -> Optional[dict]:
    for r in rows:
        if r["workload_id"] == workload_id and r["impl"] == impl:
            return r
    return None


# ---------------------------------------------------------------------------------------------
# tiers
# ---------------------------------------------------------------------------------------------


def tier_reached(us: float, threshold: float, inclusive: bool) -> bool:
    return us <= threshold if inclusive else us < threshold


def tier_cell(us: Optional[float], floor_us: Optional[float], threshold: float,
              inclusive: bool) -> str:
    """The status of one tier for one row. A tier is "reached" only when measured; a tier whose
    threshold the physical floor of the workload already fails is "below the physical floor"."""
    below = floor_us is not None and not tier_reached(floor_us, threshold, inclusive)
    fl = f"floor {floor_us:.3g} µs/head" if floor_us is not None else ""
    if us is None:
        return f"below the physical floor ({fl})" if below else "not measured"
    if tier_reached(us, threshold, inclusive):
        return (f"reached, yet below the computed physical floor ({fl}): check the measurement"
                if below else "reached")
    if below:
        return f"below the physical floor ({fl})"
    return "not reached"


def tier_status(us: Optional[float], floor_us: Optional[float]) -> str:
    if us is None:
        return "not measured"
    best = None
    for name, thr, inc in TIERS:
        if tier_reached(us, thr, inc):
            best = name
    if best:
        return f"{best} reached"
    lowest = TIERS[0]
    return f"no tier reached (needs {us / lowest[1]:.2f}x faster for {lowest[0]})"


def _section_workload(workloads: Sequence[Workload], section: str, kind: str):
    for w in workloads:
        if w.section != section:
            continue
        if kind == "sparsek" and w.kind == "sparsek":
            return w
        if w.name == kind:
            return w
    return None


def baseline_row(rows: Sequence[dict]) -> Optional[dict]:
    """Baseline = measured SDPA default backend, causal, at the seed shape."""
    r = find_row(rows, "seed/dense_causal", "sdpa_default")
    return r if is_measured(r) else None


def tier_table(rows: Sequence[dict], floors: Dict[str, dict],
               workloads: Sequence[Workload]) -> dict:
    """Tier rows for the project's kernels at the seed and the tier-origin shape, with the
    SDPA peers for context. Returns {"baseline": {...}, "tiers": [...], "rows": [...]}."""
    base = baseline_row(rows)
    out_rows = []
    for section, label in TIER_SECTIONS:
        for impl, kind in PROJECT_ROWS + (("sdpa_default", "dense_causal"),
                                          ("sdpa_cudnn", "dense_causal")):
            w = _section_workload(workloads, section, kind)
            if w is None:
                continue
            r = find_row(rows, w.id, impl)
            if r is None and impl.startswith("sdpa"):
                continue
            f = floors.get(w.id, {})
            floor_us = f.get("floor_us_per_head")
            us = r["us_per_head"] if is_measured(r) else None
            cells = {name: tier_cell(us, floor_us, thr, inc) for name, thr, inc in TIERS}
            if us is not None:
                status = tier_status(us, floor_us)
            elif r is None:
                status = "not measured (not run)"
            else:
                status = f"not measured ({r.get('status')})"
            out_rows.append(dict(
                section=section, shape_label=label, shape=w.shape.label(), workload=w.name,
                workload_id=w.id, impl=impl, project=impl.startswith("bsk"), us_per_head=us,
                floor_us_per_head=floor_us, tiers=cells, status=status,
                x_vs_baseline=(base["us_per_head"] / us) if (base and us) else None))
    return dict(
        baseline=dict(impl="sdpa_default", workload_id="seed/dense_causal",
                      us_per_head=base["us_per_head"] if base else None,
                      status="measured" if base else "not measured"),
        tiers=[dict(name=n, threshold_us_per_head=t, inclusive=i) for n, t, i in TIERS],
        rows=out_rows)


# ---------------------------------------------------------------------------------------------
# targets (SPEC section 6)
# ---------------------------------------------------------------------------------------------


def _target(name: str, required: str, measured: Optional[float], ok: Optional[bool],
            unit: str = "", why: str = "") -> dict:
    if measured is None or ok is None:
        status = "not measured" + (f" ({why})" if why else "")
    else:
        status = "met" if ok else "not met"
    return dict(target=name, required=required,
                measured=None if measured is None else float(measured), unit=unit,
                status=status)


def _ratio(rows, num_wid, num_impl, den_wid, den_impl):
    """time(num) / time(den) when both were measured, with a reason otherwise."""
    a, b = find_row(rows, num_wid, num_impl), find_row(rows, den_wid, den_impl)
    if not is_measured(a) or not is_measured(b):
        miss = [f"{wid}:{i} {(r or {}).get('status', 'not run')}" for wid, i, r in
                ((num_wid, num_impl, a), (den_wid, den_impl, b)) if not is_measured(r)]
        return None, "; ".join(miss)
    return a["ms"] / b["ms"], ""


def targets_table(rows: Sequence[dict], ceilings: dict,
                  workloads: Sequence[Workload]) -> List[dict]:
    """The spec's targets that this benchmark measures, each met / not met / not measured."""
    out = []
    sk_seed = _section_workload(workloads, "seed", "sparsek")
    sk_tier = _section_workload(workloads, "tier_origin", "sparsek")
    sk_id = sk_seed.id if sk_seed else "seed/sparsek_k256_w256"
    skt_id = sk_tier.id if sk_tier else "tier_origin/sparsek_k64_w64"

    r = find_row(rows, sk_id, "bsk_sparsek")
    us = r["us_per_head"] if is_measured(r) else None
    out.append(_target("SparseK fwd, seed shape, k=256 w=256 (selection included)",
                       "<= 35 µs/head", us, None if us is None else us <= 35.0, "µs/head",
                       (r or {}).get("status", "not run")))
    xf = r.get("x_floor") if is_measured(r) else None
    out.append(_target("SparseK fwd, seed shape: multiple of the floor", "<= 1.6x floor", xf,
                       None if xf is None else xf <= 1.6, "x floor",
                       (r or {}).get("status", "not run") if xf is None else ""))
    share = r.get("selection_share") if is_measured(r) else None
    out.append(_target("SparseK selection, seed shape: share of the call", "< 10%",
                       None if share is None else 100 * share,
                       None if share is None else share < 0.10, "%",
                       "no kernel split in this run" if is_measured(r)
                       else (r or {}).get("status", "not run")))
    for peer, req, need in (("flex_token_level", ">= 4.5x FlexAttention token-level (Triton)",
                             4.5),
                            ("flex_token_level_flash", ">= 4.4x FlexAttention FLASH backend",
                             4.4)):
        v, why = _ratio(rows, sk_id, peer, sk_id, "bsk_sparsek")
        out.append(_target(f"SparseK fwd vs {peer} (same key set)", req, v,
                           None if v is None else v >= need, "x", why))
    v, why = _ratio(rows, "seed/dense_causal", "sdpa_cudnn", sk_id, "bsk_sparsek")
    out.append(_target("SparseK fwd vs cuDNN SDPA causal (seed shape)", ">= 3.8x", v,
                       None if v is None else v >= 3.8, "x", why))
    for wid, label in (("seed/dense", "non-causal"), ("seed/dense_causal", "causal")):
        impl = "bsk_dense" if wid.endswith("/dense") else "bsk_dense_causal"
        v, why = _ratio(rows, wid, "sdpa_cudnn", wid, impl)
        out.append(_target(f"Dense fwd vs cuDNN SDPA, {label} (seed shape)", ">= 1.10x", v,
                           None if v is None else v >= 1.10, "x", why))
    r = find_row(rows, skt_id, "bsk_sparsek")
    us = r["us_per_head"] if is_measured(r) else None
    out.append(_target("Tier-origin shape: SparseK k=64 w=64 in Tier 3", "< 2.0 µs/head", us,
                       None if us is None else us < 2.0, "µs/head",
                       (r or {}).get("status", "not run")))
    v, why = _ratio(rows, "tier_origin/dense_causal", "sdpa_cudnn", skt_id, "bsk_sparsek")
    out.append(_target("Tier-origin shape: SparseK k=64 w=64 vs cuDNN SDPA causal",
                       "> 1.0x (faster)", v, None if v is None else v > 1.0, "x", why))
    # decode with a constant-size cache: no dedicated entry point yet; the dense kernel over
    # the k+window cache is the proxy shown in the decode section.
    proxy = find_row(rows, "decode/decode_ctx512", "bsk_dense")
    copy = ceilings.get("copy_tbps")
    why = "no constant-size-cache decode entry point in the API"
    if is_measured(proxy) and copy:
        why += (f"; proxy: bsk_dense over the 512-entry cache reaches "
                f"{100 * proxy['tbps'] / copy:.0f}% of copy bandwidth")
    out.append(_target("SparseK decode, constant-size cache (k + window entries)",
                       ">= 85% of copy bandwidth", None, None, "% copy BW", why))
    out.append(_target("SparseK fwd+bwd, seed shape", "<= 130 µs/head; >= 4x cuDNN fwd+bwd",
                       None, None, "", "this benchmark times forward passes only"))
    return out


# ---------------------------------------------------------------------------------------------
# markdown
# ---------------------------------------------------------------------------------------------


def fmt(x: Any, digits: int = 3) -> str:
    """A number with ``digits`` significant digits (no exponent for ordinary magnitudes);
    "—" for None; booleans as yes/no."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if x == 0:
            return "0"
        a = abs(x)
        if a >= 1e6 or a < 1e-3:
            return f"{x:.{max(digits - 1, 0)}e}"
        decimals = max(0, digits - 1 - int(math.floor(math.log10(a))))
        return f"{x:.{decimals}f}"
    return str(x)


def _cell(x: Any) -> str:
    s = fmt(x) if not isinstance(x, str) else x
    return s.replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(c) for c in r) + " |")
    return "\n".join(lines)


def _status_text(r: dict) -> str:
    st = r.get("status") or "?"
    if st != STATUS_OK and r.get("error"):
        err = [ln for ln in str(r["error"]).strip().splitlines() if ln.strip()]
        msg = err[0] if err else ""
        if len(msg) > 160:
            msg = msg[:157] + "..."
        return f"{st}: {msg}"
    return st


def _allclose_text(r: dict) -> str:
    a = r.get("allclose")
    if a is None:
        return r.get("check") or "—"
    return "yes" if a else "**NO**"


SECTION_TITLES = {"seed": "Seed shape", "tier_origin": "Tier-origin shape",
                  "decode": "Decode", "sweep": "Sweep"}


def render_markdown(doc: dict) -> str:
    env, cfg, ceil = doc.get("env", {}), doc.get("config", {}), doc.get("ceilings", {})
    floors, rows = doc.get("floors", {}), doc.get("results", [])
    wls = doc.get("workloads", [])
    out: List[str] = []
    gpu = env.get("gpu_name", "unknown GPU")
    out.append(f"# BlackwellSparseK benchmark — {gpu} — {doc.get('generated_utc', '')}")
    out.append("")
    if doc.get("partial"):
        out.append(f"**Partial report** ({doc['partial']}).")
        out.append("")
    out.append("Machine output of `bench/run_bench.py` (never edited by hand). Timings on these "
               "machines vary by up to ~15% run to run: compare ratios within one run.")
    out.append("")

    out.append("## Environment")
    out.append("")
    env_rows = [(k, env.get(k)) for k in (
        "gpu_name", "sm_count", "compute_capability", "gpu_memory_gb", "l2_mb", "driver",
        "cuda", "torch", "triton", "cudnn", "python", "blackwell_sparsek", "bsk_kernels",
        "bsk_build_info", "git_commit", "hostname") if k in env]
    for name, info in sorted((env.get("peers") or {}).items()):
        env_rows.append((f"peer: {name}", info))
    out.append(md_table(["item", "value"], [(k, v if v is not None else "—")
                                            for k, v in env_rows]))
    out.append("")

    out.append("## Method")
    out.append("")
    out.append(
        f"CUDA events around each call after warm-up ({cfg.get('warmup')} calls, plus the "
        f"first call that compiles/initialises), median of {cfg.get('repeat')} repeats "
        f"(fewer for calls over {cfg.get('max_row_seconds')} s per row); "
        f"L2 flush between repeats: {fmt(cfg.get('flush_l2'))}. Inputs random normal in each "
        f"workload's dtype (its heading; {cfg.get('dtype', 'float16')} unless it says "
        "otherwise), layout BSHD (SDPA/FlexAttention get the BHSD view "
        "of the same storage); SparseK scores = randn + a position slope (float32 "
        "[B, Sk, Hkv]). µs/head = median ms * 1000 / H. TFLOP/s on useful FLOPs "
        "(4·B·H·Σrows keys attended·D; causal and SparseK counted exactly). TB/s = q,k,v,o "
        "bytes / time. Correctness: torch.allclose(out, ref, rtol, atol) with (rtol, atol) = "
        + ", ".join(f"{v} for {k}" for k, v in TOLERANCES.items()) + " against "
        "a float32 reference on a sample (first 2 batches x first 2 query heads"
        f"{', last ' + str(cfg.get('ref_rows')) + ' query rows' if cfg.get('ref_rows') else ''}"
        "); SparseK reference: blackwell_sparsek.reference.sparsek_attention_ref.")
    out.append("")

    out.append("## Ceilings (measured in this run)")
    out.append("")
    out.append(md_table(["ceiling", "value", "how"], [
        ("copy bandwidth", f"{fmt(ceil.get('copy_tbps'))} TB/s",
         ceil.get("copy_method", "device-to-device copy, bytes read + written")),
        ("fp16 GEMM", f"{fmt(ceil.get('gemm_fp16_tflops'))} TFLOP/s",
         ceil.get("gemm_method", "torch.matmul 8192^3")),
        ("bf16 GEMM", f"{fmt(ceil.get('gemm_bf16_tflops'))} TFLOP/s",
         ceil.get("gemm_method", "torch.matmul 8192^3")),
    ]))
    if ceil.get("error"):
        out.append("")
        out.append(f"Ceiling errors: {ceil['error']}")
    out.append("")

    out.append("## Floors per workload")
    out.append("")
    out.append("I/O floor = bytes(q, k, v read once + o written once) / copy bandwidth; "
               "compute floor = useful FLOPs / fp16 GEMM rate; floor = the larger.")
    out.append("")
    frows = []
    for w in wls:
        f = floors.get(w["id"], {})
        frows.append((w["id"], f"{fmt(f.get('keys_per_query'), 4)}",
                      fmt(f.get("io_bytes", 0) / 1e9 if f.get("io_bytes") else None),
                      fmt(f.get("flops", 0) / 1e12 if f.get("flops") else None),
                      fmt(f.get("io_floor_us_per_head")),
                      fmt(f.get("compute_floor_us_per_head")),
                      fmt(f.get("floor_us_per_head")), f.get("bound") or "—"))
    out.append(md_table(["workload", "keys/query (avg)", "I/O GB", "useful TFLOP",
                         "I/O floor µs/head", "compute floor µs/head", "floor µs/head",
                         "bound"], frows))
    out.append("")

    tiers = doc.get("tiers") or {}
    if tiers:
        out.append("## Tier table")
        out.append("")
        b = tiers.get("baseline", {})
        out.append(f"Baseline = measured SDPA µs/head at the seed shape, causal, default "
                   f"backend: **{fmt(b.get('us_per_head'))} µs/head** ({b.get('status')}). "
                   "Tier 1 <= 3.820, Tier 2 < 3.0, Tier 3 < 2.0 µs/head. No tier is marked "
                   "reached unless measured; a tier below the workload's physical floor on "
                   "this GPU says so. Shapes: seed (B16 H96 S4096 D128 fp16) and tier-origin "
                   "(B16 H96 S512 D64 fp16 causal; SparseK k=64 window=64).")
        out.append("")
        names = [t["name"] for t in tiers.get("tiers", [])]
        trs = []
        for r in tiers.get("rows", []):
            trs.append([r["shape_label"], r["workload"],
                        r["impl"] + ("" if r["project"] else " (peer)"),
                        fmt(r["us_per_head"]), fmt(r["floor_us_per_head"]),
                        fmt(r["x_vs_baseline"])] + [r["tiers"][n] for n in names]
                       + [r["status"]])
        out.append(md_table(["shape", "workload", "implementation", "µs/head",
                             "floor µs/head", "x vs baseline"] + names + ["status"], trs))
        out.append("")

    tg = doc.get("targets") or []
    if tg:
        out.append("## Targets (SPEC section 6, ratios from this run)")
        out.append("")
        out.append(md_table(["target", "required", "measured", "status"], [
            (t["target"], t["required"],
             (fmt(t["measured"]) + (" " + t["unit"] if t.get("unit") else ""))
             if t.get("measured") is not None else "—", t["status"]) for t in tg]))
        out.append("")

    out.append("## Results")
    out.append("")
    by_wl: Dict[str, List[dict]] = {}
    for r in rows:
        by_wl.setdefault(r["workload_id"], []).append(r)
    current = None
    for w in wls:
        if w["section"] != current:
            current = w["section"]
            out.append(f"### {SECTION_TITLES.get(current, current)}")
            out.append("")
        f = floors.get(w["id"], {})
        out.append(f"#### {w['id']} — {w.get('describe', '')}")
        out.append("")
        out.append(f"Floor {fmt(f.get('floor_us_per_head'))} µs/head "
                   f"(I/O {fmt(f.get('io_floor_us_per_head'))}, compute "
                   f"{fmt(f.get('compute_floor_us_per_head'))}); "
                   f"keys/query {fmt(f.get('keys_per_query'), 4)}."
                   + (f" {w['note']}" if w.get("note") else ""))
        out.append("")
        trs = []
        bw_col = w.get("kind") == "decode"
        for r in by_wl.get(w["id"], []):
            trs.append([r["impl"], _status_text(r), fmt(r.get("ms")), fmt(r.get("us_per_head")),
                        fmt(r.get("tflops")), fmt(r.get("tbps"))]
                       + ([fmt(r.get("pct_copy_bw"))] if bw_col else [])
                       + [fmt(r.get("speedup_vs_sdpa_default")), fmt(r.get("x_floor")),
                          _allclose_text(r), fmt(r.get("max_abs_err")),
                          fmt(r.get("mean_abs_err")), r.get("note") or ""])
        if trs:
            out.append(md_table(["impl", "status", "ms", "µs/head", "TFLOP/s", "TB/s"]
                                + (["% copy BW"] if bw_col else [])
                                + ["vs SDPA default", "x floor", "allclose", "max abs err",
                                   "mean abs err", "note"], trs))
        else:
            out.append("(no rows)")
        out.append("")

    notes = doc.get("notes") or []
    if notes:
        out.append("## Notes")
        out.append("")
        for n in notes:
            out.append(f"- {n}")
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# JSON, chart, files
# ---------------------------------------------------------------------------------------------


def json_safe(x: Any) -> Any:
    """Strict JSON: NaN/inf floats become strings ("nan", "inf", "-inf"); tuples lists."""
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    return str(x)


def to_json(doc: dict) -> str:
    return json.dumps(json_safe(doc), indent=1, allow_nan=False)


REQUIRED_ROW_KEYS = ("workload", "impl", "shape", "ms", "us_per_head", "tflops", "tbps",
                     "speedup_vs_sdpa_default", "x_floor", "allclose", "max_abs_err",
                     "mean_abs_err", "status")


def validate_doc(doc: dict) -> List[str]:
    """Schema problems of a report document (empty when it is well formed)."""
    errs = []
    for k in ("env", "ceilings", "floors", "results"):
        if k not in doc:
            errs.append(f"missing top-level key {k!r}")
    for i, r in enumerate(doc.get("results", [])):
        for k in REQUIRED_ROW_KEYS:
            if k not in r:
                errs.append(f"results[{i}] ({r.get('workload')}/{r.get('impl')}): missing {k!r}")
        if r.get("status") == STATUS_OK and r.get("ms") is None:
            errs.append(f"results[{i}]: status ok without ms")
        if r.get("status") not in (None, STATUS_OK) and r.get("ms") is not None:
            errs.append(f"results[{i}]: status {r.get('status')!r} with a time")
    return errs


def gpu_slug(name: Optional[str]) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", (name or "unknown-gpu").lower()).strip("-")
    return s or "unknown-gpu"


def output_stem(env: dict, when: Optional[_dt.datetime] = None, suffix: str = "") -> str:
    when = when or _dt.datetime.now(_dt.timezone.utc)
    commit = (env.get("git_commit_short") or "nogit")
    return f"{gpu_slug(env.get('gpu_name'))}-{when:%Y%m%d}-{commit}{suffix}"


def _atomic_write(path: str, data: bytes) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_chart(doc: dict, path: str) -> str:
    """PNG: µs/head per implementation (horizontal bars), one panel per workload, the
    workload's floor drawn as a dashed line. Uses matplotlib's Agg backend."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = doc.get("results", [])
    floors = doc.get("floors", {})
    wls = [w for w in doc.get("workloads", [])
           if any(is_measured(r) and r["workload_id"] == w["id"] for r in rows)]
    if not wls:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "no measured rows", ha="center", va="center")
        ax.set_axis_off()
    else:
        ncols = 2 if len(wls) > 1 else 1
        nrows = -(-len(wls) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(7.5 * ncols, 2.8 * nrows),
                                 squeeze=False)
        for ax in axes.flat[len(wls):]:
            ax.set_axis_off()
        for ax, w in zip(axes.flat, wls):
            rs = [r for r in rows if r["workload_id"] == w["id"] and is_measured(r)]
            names = [r["impl"] for r in rs]
            vals = [r["us_per_head"] for r in rs]
            colors = ["tab:green" if n.startswith("bsk") else "tab:blue" for n in names]
            ys = list(range(len(rs)))
            ax.barh(ys, vals, color=colors)
            ax.set_yticks(ys)
            ax.set_yticklabels(names, fontsize=8)
            ax.invert_yaxis()
            for y, v in zip(ys, vals):
                ax.text(v, y, f" {fmt(v)}", va="center", fontsize=7)
            fl = (floors.get(w["id"]) or {}).get("floor_us_per_head")
            if fl:
                ax.axvline(fl, color="tab:red", linestyle="--", linewidth=1.2,
                           label=f"floor {fmt(fl)} µs/head")
                ax.legend(fontsize=7, loc="best")
            top = max(vals + ([fl] if fl else []))
            ax.set_xlim(0, top * 1.25 if top > 0 else 1)
            ax.set_xlabel("µs/head (lower is better)", fontsize=8)
            ax.set_title(f"{w['id']}  ({w.get('shape_label', '')})", fontsize=9)
            ax.tick_params(axis="x", labelsize=7)
        fig.suptitle(f"BlackwellSparseK benchmark — {doc.get('env', {}).get('gpu_name', '')}",
                     fontsize=10)
    fig.tight_layout()
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def finalize(doc: dict, workloads: Sequence[Workload]) -> dict:
    """Recompute everything derived (floors, per-row ratios, tiers, targets) in place."""
    doc["floors"] = compute_floors(workloads, doc.get("ceilings", {}))
    attach_derived(doc.get("results", []), doc["floors"])
    copy = doc.get("ceilings", {}).get("copy_tbps")
    for r in doc.get("results", []):
        r["pct_copy_bw"] = (100.0 * r["tbps"] / copy) if (copy and r.get("tbps")) else None
    doc["tiers"] = tier_table(doc["results"], doc["floors"], workloads)
    doc["targets"] = targets_table(doc["results"], doc.get("ceilings", {}), workloads)
    doc["workloads"] = [dict(w.as_dict(), describe=w.describe(), shape_label=w.shape.label())
                        for w in workloads]
    doc.setdefault("schema_version", SCHEMA_VERSION)
    return doc


def write_outputs(doc: dict, out_dir: str, stem: str, chart: bool = True) -> Dict[str, str]:
    """Write <stem>.md, <stem>.json (and <stem>.png) under out_dir; returns the paths. A chart
    failure is recorded in the document, never raised."""
    paths = {"md": os.path.join(out_dir, stem + ".md"),
             "json": os.path.join(out_dir, stem + ".json")}
    if chart:
        paths["png"] = os.path.join(out_dir, stem + ".png")
        try:
            write_chart(doc, paths["png"])
            doc.pop("chart_error", None)
        except Exception as e:  # matplotlib missing or broken: the report still goes out
            doc["chart_error"] = f"{type(e).__name__}: {e}"
            paths.pop("png")
    _atomic_write(paths["json"], to_json(doc).encode())
    _atomic_write(paths["md"], render_markdown(doc).encode())
    return paths

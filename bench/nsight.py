"""Nsight Compute driver of `make bench-profile` (entry point: bench/profile.py).

Runs ``ncu --clock-control none --target-processes all -k regex:<project kernels>
--metrics <tensor pipe, DRAM, achieved occupancy, SM throughput, duration> --csv`` on a small
driver (this file with ``--driver``) that launches the project's kernels once each at the seed
shape (dense, dense causal, SparseK k=256 w=256 with its selection kernels), parses the CSV
and writes a markdown table "Tensor Core Util / Memory BW Util / SM Efficiency (achieved
occupancy)" per kernel launch into the output folder, with the raw CSV beside it.

Exit status: 0 done; 1 ncu failed or matched no kernel; 3 ncu not found; 4 the project's
kernels are not built (nothing to profile).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import glob
import io
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _p in (HERE, os.path.join(REPO, "python")):
    if _p not in sys.path:
        sys.path.insert(0 if _p == HERE else 1, _p)

EXIT_NCU_FAILED = 1
EXIT_NO_NCU = 3
EXIT_NOT_BUILT = 4

# Kernel names of the project (matched against demangled names): the attention engine
# (bsk::sm90::attention_fwd_sm90_kernel<...>) and the selection kernels (bsk::kernels::...),
# including library kernels instantiated inside the bsk namespaces.
DEFAULT_KERNELS = r"regex:attention_fwd_sm90|select_smem_kernel|select_global_kernel|" \
                  r"prep_sort_kernel|sparsek|bsk::"

# Per column, the metrics to try in order (the first one this ncu knows is used).
METRIC_CANDIDATES: Dict[str, Sequence[str]] = {
    "tensor": ("sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active",
               "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
               "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active",
               "sm__inst_executed_pipe_tensor.avg.pct_of_peak_sustained_active"),
    "dram": ("dram__throughput.avg.pct_of_peak_sustained_elapsed",
             "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed"),
    "occupancy": ("sm__warps_active.avg.pct_of_peak_sustained_active",),
    "sm_throughput": ("sm__throughput.avg.pct_of_peak_sustained_elapsed",),
    "duration": ("gpu__time_duration.sum",),
}
COLUMN_TITLES = {"tensor": "Tensor Core Util (%)", "dram": "Memory BW Util (%)",
                 "occupancy": "SM Efficiency: achieved occupancy (%)",
                 "sm_throughput": "SM throughput (%)", "duration": "Duration"}


# ---------------------------------------------------------------------------------------------
# pure helpers (tested on CPU)
# ---------------------------------------------------------------------------------------------


def choose_metrics(available: Optional[set]) -> Dict[str, str]:
    """{column: metric}: per column the first candidate whose base name (before the first
    '.') ncu lists; the first candidate when the list is unknown (None)."""
    out = {}
    for col, cands in METRIC_CANDIDATES.items():
        pick = None
        if available is not None:
            for m in cands:
                if m.split(".")[0] in available:
                    pick = m
                    break
        out[col] = pick or cands[0]
    return out


def parse_query_metrics(text: str) -> set:
    """Base metric names from ``ncu --query-metrics`` output."""
    names = set()
    for line in text.splitlines():
        m = re.match(r"\s*([a-z0-9]+__[A-Za-z0-9_]+)\b", line)
        if m:
            names.add(m.group(1))
    return names


def _num(s: str) -> Optional[float]:
    s = (s or "").strip().replace(",", "")
    if s in ("", "n/a", "N/A"):
        return None
    try:
        return float(s)
    except ValueError:
        return None


def parse_ncu_csv(text: str) -> List[dict]:
    """Rows {"id", "kernel", "metric", "unit", "value"} from ncu's --csv output (the long
    "details" format with "Metric Name"/"Metric Value" columns, or the wide "raw" format with
    one column per metric). Lines before the CSV header (==PROF== messages, the driver's
    output) are skipped. Without an "ID" column, launches are numbered in order of appearance
    (a new launch starts when the kernel name changes or a metric repeats)."""
    lines = text.splitlines()
    start = None
    for i, line in enumerate(lines):
        if line.startswith('"') and '"Kernel Name"' in line:
            start = i
            break
    if start is None:
        return []
    body = [ln for ln in lines[start:] if ln.startswith('"')]
    reader = csv.DictReader(io.StringIO("\n".join(body)))
    out = []
    wide_units = None
    auto_id, last_kernel, seen = -1, None, set()
    for rec in reader:
        if rec.get("Kernel Name") in (None, "Kernel Name"):
            continue
        lid = rec.get("ID")
        if lid is None:
            metric = rec.get("Metric Name")
            if rec["Kernel Name"] != last_kernel or metric is None or metric in seen:
                auto_id, seen = auto_id + 1, set()
            last_kernel = rec["Kernel Name"]
            if metric is not None:
                seen.add(metric)
            lid = str(auto_id)
        if "Metric Name" in rec:
            out.append(dict(id=lid, kernel=rec.get("Kernel Name", ""),
                            metric=rec.get("Metric Name", ""), unit=rec.get("Metric Unit", ""),
                            value=_num(rec.get("Metric Value", ""))))
            continue
        if wide_units is None and rec.get("ID") is not None \
                and not re.match(r"^\d+$", rec["ID"].strip()):
            wide_units = rec  # the raw page's second header line holds the units
            continue
        for k, v in rec.items():
            if k and "__" in k:
                out.append(dict(id=lid, kernel=rec.get("Kernel Name", ""), metric=k,
                                unit=(wide_units or {}).get(k, ""), value=_num(v)))
    return out


def short_kernel_name(name: str) -> str:
    """``void bsk::sm90::attention_fwd_sm90_kernel<Traits<...>, bsk::sm90::SparseKMode>(...)``
    -> ``attention_fwd_sm90_kernel<SparseKMode>``: the function's base name and the template
    arguments that name a mode (Dense/Sparse/Causal/Mode), which tell instantiations apart."""
    s = re.sub(r"^\s*void\s+", "", name or "").strip()
    s = s.replace("(anonymous namespace)::", "")
    if s.endswith(")"):  # drop the parameter list: the parenthesised group closing the name
        depth = 0
        for i in range(len(s) - 1, -1, -1):
            if s[i] == ")":
                depth += 1
            elif s[i] == "(":
                depth -= 1
                if depth == 0:
                    s = s[:i]
                    break
    lt = s.find("<")
    base, targs = (s, "") if lt < 0 else (s[:lt], s[lt:])
    base = base.split("::")[-1] if "::" in base else base
    modes = []
    for tok in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", targs):
        if re.search(r"mode|dense|sparse|causal", tok, re.I) and tok not in modes:
            modes.append(tok)
    return base + (f"<{','.join(modes)}>" if modes else "")


def summarize(rows: List[dict], chosen: Dict[str, str]) -> List[dict]:
    """One entry per kernel launch (ncu ID order): kernel, short name, the chosen metrics."""
    by_metric = {v: k for k, v in chosen.items()}
    launches: Dict[str, dict] = {}
    order = []
    for r in rows:
        lid = str(r["id"])
        if lid not in launches:
            launches[lid] = dict(id=lid, kernel=r["kernel"], name=short_kernel_name(r["kernel"]),
                                 values={}, units={})
            order.append(lid)
        col = by_metric.get(r["metric"])
        if col:
            launches[lid]["values"][col] = r["value"]
            launches[lid]["units"][col] = r["unit"]
    key = (lambda i: int(i)) if all(i.isdigit() for i in order) else (lambda i: order.index(i))
    return [launches[i] for i in sorted(order, key=key)]


def _fmt_duration(v: Optional[float], unit: str) -> str:
    if v is None:
        return "—"
    scale = {"nsecond": 1e-6, "ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0,
             "ms": 1.0, "second": 1e3, "s": 1e3}.get((unit or "").strip(), None)
    if scale is None:
        return f"{v:g} {unit}".strip()
    return f"{v * scale:.3f} ms"


def render_markdown(launches: List[dict], chosen: Dict[str, str], meta: dict) -> str:
    out = [f"# Nsight Compute profile — {meta.get('gpu', 'unknown GPU')} — {meta.get('date', '')}",
           "",
           f"Commit {meta.get('commit', 'unknown')}; shape {meta.get('shape', '')}. Command:",
           "", "```", meta.get("command", ""), "```", "",
           "Launch order of the driver: " + meta.get("order", ""), ""]
    cols = ["tensor", "dram", "occupancy", "sm_throughput"]
    headers = ["#", "kernel", "duration"] + [COLUMN_TITLES[c] for c in cols]
    out.append("| " + " | ".join(headers) + " |")
    out.append("|" + "|".join("---" for _ in headers) + "|")
    for i, ln in enumerate(launches):
        vals = [("—" if ln["values"].get(c) is None else f"{ln['values'][c]:.1f}") for c in cols]
        dur = _fmt_duration(ln["values"].get("duration"), ln["units"].get("duration", ""))
        out.append("| " + " | ".join([str(i), ln["name"].replace("|", "\\|"), dur] + vals) + " |")
    out.append("")
    out.append("Metrics: " + "; ".join(f"{COLUMN_TITLES[c]} = `{m}`" for c, m in chosen.items()))
    out.append("")
    out.append("Full kernel names:")
    out.append("")
    for i, ln in enumerate(launches):
        out.append(f"{i}. `{ln['kernel'][:400]}`")
    out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# ncu
# ---------------------------------------------------------------------------------------------


def find_ncu(explicit: Optional[str] = None) -> Optional[str]:
    cands = [explicit] if explicit else []
    cands.append(shutil.which("ncu"))
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            cands.append(os.path.join(root, "bin", "ncu"))
    cands += sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu"), reverse=True)
    cands += sorted(glob.glob("/usr/local/cuda-*/bin/ncu"), reverse=True)
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def query_metrics(ncu: str) -> Optional[set]:
    try:
        p = subprocess.run([ncu, "--query-metrics"], capture_output=True, text=True, timeout=120)
        names = parse_query_metrics(p.stdout)
        return names or None
    except Exception:
        return None


HINTS = (("ERR_NVGPUCTRPERM", "the GPU performance counters are not accessible to this user: "
          "run as root, or load the driver with NVreg_RestrictProfilingToAdminUsers=0"),
         ("Failed to find metric", "this ncu does not know one of the metrics (see the log)"),
         ("No kernels were profiled", "no kernel matched the --kernels regex (are the project's "
          "kernels built? a fallback to PyTorch launches no project kernel)"))


def gpu_name() -> str:
    try:
        p = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=15)
        if p.returncode == 0 and p.stdout.strip():
            return p.stdout.strip().splitlines()[0]
    except Exception:
        pass
    return "unknown GPU"


# ---------------------------------------------------------------------------------------------
# the driver (runs under ncu)
# ---------------------------------------------------------------------------------------------


def driver(shape_name: str) -> int:
    import torch

    import peers as P
    import workloads as W
    bsk, status, msg = P.bsk_state()
    if status != "ok":
        print(f"profile driver: project kernels: {status}: {msg}", file=sys.stderr, flush=True)
        return EXIT_NOT_BUILT
    d = dict(W.SEED)
    ks, win = W.SEED_K, W.SEED_W
    if shape_name == "tier":
        d, ks, win = dict(W.TIER_ORIGIN), W.TIER_K, W.TIER_W
    elif shape_name == "quick":
        d.update(B=2, H=8, Hkv=8, S=1024)
    shape = W.Shape(d["B"], d["H"], d["Hkv"], d["S"], d["S"], d["D"], "float16")
    x = P.make_inputs(shape, "cuda", seed=0)
    ok = 0
    calls = (("bsk_dense", W.Workload("dense", "dense", "seed", shape, causal=False)),
             ("bsk_dense_causal", W.Workload("dense_causal", "dense", "seed", shape,
                                             causal=True)),
             ("bsk_sparsek", W.Workload("sparsek", "sparsek", "seed", shape, causal=True,
                                        k_select=ks, window=win)))
    for impl, w in calls:
        try:
            fn = P.guard_kernel(bsk, P.build_bsk(impl, w, x, bsk))
            fn()
            torch.cuda.synchronize()
            ok += 1
            print(f"profile driver: {impl} done", file=sys.stderr, flush=True)
        except Exception as e:
            print(f"profile driver: {impl} failed: {type(e).__name__}: {e}", file=sys.stderr,
                  flush=True)
    return 0 if ok else EXIT_NCU_FAILED


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Nsight Compute on the project's kernels.")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    ap.add_argument("--quick", action="store_true", help="small shape (B2 H8 S1024 D128)")
    ap.add_argument("--shape", choices=["seed", "tier", "quick"], default=None,
                    help="seed (default), tier (B16 H96 S512 D64, k=64 w=64), quick")
    ap.add_argument("--kernels", default=DEFAULT_KERNELS,
                    help="ncu -k filter on demangled kernel names")
    ap.add_argument("--launch-count", type=int, default=16)
    ap.add_argument("--ncu", default=None, help="path of ncu")
    ap.add_argument("--timeout", type=float, default=540.0)
    ap.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    args, unknown = ap.parse_known_args(argv)
    if args.shape is None:
        args.shape = "quick" if args.quick else "seed"
    return args, unknown


def main(argv=None) -> int:
    args, unknown = parse_args(argv)
    if args.driver:
        return driver(args.shape)
    if unknown:
        print(f"profile: ignoring arguments meant for run_bench.py: {' '.join(unknown)}",
              file=sys.stderr)
    ncu = find_ncu(args.ncu)
    if ncu is None:
        print("profile: Nsight Compute (ncu) not found (looked on PATH, $CUDA_HOME/bin, "
              "/usr/local/cuda/bin, /opt/nvidia/nsight-compute). Install Nsight Compute or "
              "pass --ncu PATH. No profile written.", file=sys.stderr)
        return EXIT_NO_NCU
    avail = query_metrics(ncu)
    chosen = choose_metrics(avail)
    driver_cmd = [sys.executable, os.path.join(HERE, "profile.py"), "--driver", "--shape",
                  args.shape]

    def ncu_cmd(metrics):
        return [ncu, "--clock-control", "none", "--target-processes", "all",
                "--kernel-name-base", "demangled", "-k", args.kernels,
                "--launch-count", str(args.launch_count), "--metrics", ",".join(metrics),
                "--csv"] + driver_cmd

    env = dict(os.environ)
    env["LC_ALL"] = "C"  # numbers with a decimal point
    env["PYTHONPATH"] = os.pathsep.join([HERE, os.path.join(REPO, "python"),
                                         env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = ncu_cmd(list(chosen.values()))
    print("profile: " + " ".join(cmd), file=sys.stderr, flush=True)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
        text, rc = p.stdout + "\n" + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
        rc = "timeout"
    if "Failed to find metric" in text and avail is None:
        safe = dict(chosen, tensor="sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active")
        print("profile: retrying with a smaller metric set", file=sys.stderr, flush=True)
        chosen = safe
        cmd = ncu_cmd(list(chosen.values()))
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
        text, rc = p.stdout + "\n" + p.stderr, p.returncode

    os.makedirs(args.out_dir, exist_ok=True)
    try:
        from run_bench import git_info
        gi = git_info()
    except Exception:
        gi = dict(git_commit="unknown", git_commit_short="nogit")
    try:
        from report import gpu_slug
    except Exception:  # pragma: no cover
        def gpu_slug(n):
            return re.sub(r"[^a-z0-9]+", "-", (n or "gpu").lower()).strip("-")
    gname = gpu_name()
    now = _dt.datetime.now(_dt.timezone.utc)
    stem = f"profile-{gpu_slug(gname)}-{now:%Y%m%d}-{gi['git_commit_short']}"
    raw_path = os.path.join(args.out_dir, stem + ".ncu.txt")
    with open(raw_path, "w") as f:
        f.write(text)

    if "profile driver: project kernels:" in text:
        line = [ln for ln in text.splitlines() if "profile driver: project kernels:" in ln][0]
        print(f"profile: nothing to profile: {line.split(': ', 1)[1]}. Raw log: {raw_path}",
              file=sys.stderr)
        return EXIT_NOT_BUILT
    rows = parse_ncu_csv(text)
    launches = summarize(rows, chosen)
    if rc != 0 or not launches:
        hints = [h for k, h in HINTS if k in text]
        tail = "\n".join(text.strip().splitlines()[-15:])
        print(f"profile: ncu failed (exit {rc}); {len(launches)} kernel launches parsed.\n"
              + ("hint: " + "; ".join(hints) + "\n" if hints else "")
              + f"last lines:\n{tail}\nRaw log: {raw_path}", file=sys.stderr)
        return EXIT_NCU_FAILED
    meta = dict(gpu=gname, date=now.strftime("%Y-%m-%d %H:%M UTC"), commit=gi["git_commit"],
                shape=args.shape, command=" ".join(cmd),
                order="bsk.attention (non-causal), bsk.attention (causal), "
                      "bsk.sparsek_attention (selection kernels, then the attention kernel); "
                      "each launched once")
    md = render_markdown(launches, chosen, meta)
    md_path = os.path.join(args.out_dir, stem + ".md")
    with open(md_path, "w") as f:
        f.write(md)
    with open(os.path.join(args.out_dir, stem + ".json"), "w") as f:
        json.dump(dict(meta=meta, metrics=chosen, launches=launches), f, indent=1)
    print(md)
    print(f"profile: wrote {md_path} (raw: {raw_path})", file=sys.stderr)
    return 0

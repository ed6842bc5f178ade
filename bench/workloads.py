"""Workloads of the benchmark and their exact arithmetic (pure Python, no torch, no GPU).

Everything here is importable and tested on CPU (tests/python/test_bench_report.py):

* :class:`Shape` and :class:`Workload` -- what one table of the report measures;
* key counting per query row, exactly (sum over rows of keys attended), for dense, causal
  (end-aligned, FlashAttention's convention), SparseK (``|W_p| + |Sel_p|``) and the
  block-packed FlexAttention mask;
* useful FLOPs (``4 * B * H * keys_total * D``: QK^T and PV, 2 FLOPs per MAC) and I/O bytes
  (q, k, v read once + o written once);
* the workload lists: seed shape, tier-origin shape, decode, and the optional sweep.

Conventions (SPEC section 1): query row ``i`` sits at absolute position ``p = Sk - Sq + i``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
DTYPE_SHORT = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}

# The two shapes of the tier table (SPEC section 4).
SEED = dict(B=16, H=96, Hkv=96, S=4096, D=128)
TIER_ORIGIN = dict(B=16, H=96, Hkv=96, S=512, D=64)
SEED_K, SEED_W = 256, 256           # SparseK headline parameters at the seed shape
TIER_K, TIER_W = 64, 64             # SparseK at the tier-origin shape
DECODE_CONTEXT = 4096               # decode: one new token against this many keys
FLEX_BLOCK = 128                    # FlexAttention's sparse block size

# Implementation names (rows of the report). Order = measuring order inside a workload: the
# baseline first, then the project's kernels, then the peers, FlexAttention last (it compiles).
SDPA_IMPLS = ("sdpa_default", "sdpa_cudnn", "sdpa_flash", "sdpa_efficient")
PROJECT_IMPLS = ("bsk_dense", "bsk_dense_causal", "bsk_sparsek")


# ---------------------------------------------------------------------------------------------
# shapes and workloads
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    B: int
    H: int
    Hkv: int
    Sq: int
    Sk: int
    D: int
    dtype: str = "float16"

    def __post_init__(self):
        for name in ("B", "H", "Hkv", "Sq", "Sk", "D"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"Shape.{name} must be >= 1, got {getattr(self, name)}")
        if self.H % self.Hkv != 0:
            raise ValueError(f"Shape: H ({self.H}) must be a multiple of Hkv ({self.Hkv})")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"Shape.dtype must be one of {sorted(DTYPE_BYTES)}, got {self.dtype}")

    @property
    def elem_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def group(self) -> int:
        return self.H // self.Hkv

    def as_dict(self) -> dict:
        return dict(B=self.B, H=self.H, Hkv=self.Hkv, Sq=self.Sq, Sk=self.Sk, D=self.D,
                    dtype=self.dtype)

    def label(self) -> str:
        kv = "" if self.Hkv == self.H else f" Hkv{self.Hkv}"
        s = f"S{self.Sq}" if self.Sq == self.Sk else f"Sq{self.Sq} Sk{self.Sk}"
        dt = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}[self.dtype]
        return f"B{self.B} H{self.H}{kv} {s} D{self.D} {dt}"


@dataclass
class Workload:
    """One table of the report: a computation at one shape, and the implementations to time.

    ``kind``: "dense" (optionally causal), "sparsek", or "decode" (dense attention of Sq new
    queries against the context; ``k_select``/``window`` give the SparseK decode row).
    ``section``: "seed", "tier_origin", "decode", "sweep" (the report's sections).
    """
    name: str
    kind: str
    section: str
    shape: Shape
    causal: bool = False
    k_select: Optional[int] = None
    window: Optional[int] = None
    impls: Tuple[str, ...] = ()
    note: str = ""

    def __post_init__(self):
        if self.kind not in ("dense", "sparsek", "decode"):
            raise ValueError(f"Workload.kind must be dense, sparsek or decode, got {self.kind}")
        if self.kind == "sparsek":
            if self.k_select is None or self.window is None:
                raise ValueError("a sparsek workload needs k_select and window")
            if self.k_select < 0 or self.window < 0 or (self.k_select == 0 and self.window == 0):
                raise ValueError("k_select, window must be >= 0 and not both 0")
        self.impls = tuple(self.impls)

    @property
    def id(self) -> str:
        return f"{self.section}/{self.name}"

    def keys_total(self) -> int:
        """Sum over query rows and one (batch, head) of the keys attended (useful work)."""
        s = self.shape
        if self.kind == "sparsek":
            return sparsek_keys_total(s.Sq, s.Sk, self.k_select, self.window)
        return dense_keys_total(s.Sq, s.Sk, self.causal)

    def flops(self) -> int:
        return attention_flops(self.shape, self.keys_total())

    def io_bytes(self) -> int:
        return io_bytes(self.shape)

    def describe(self) -> str:
        bits = [self.shape.label()]
        if self.kind == "sparsek":
            bits.append(f"causal SparseK k={self.k_select} window={self.window}")
        elif self.kind == "decode":
            bits.append(f"decode: {self.shape.Sq} query vs {self.shape.Sk} keys")
        else:
            bits.append("causal" if self.causal else "non-causal")
        return ", ".join(bits)

    def as_dict(self) -> dict:
        return dict(id=self.id, name=self.name, kind=self.kind, section=self.section,
                    shape=self.shape.as_dict(), causal=self.causal, k_select=self.k_select,
                    window=self.window, impls=list(self.impls), note=self.note)


# ---------------------------------------------------------------------------------------------
# exact key counting
# ---------------------------------------------------------------------------------------------


def _sum_range(lo: int, hi: int) -> int:
    """lo + (lo+1) + ... + hi (0 when empty)."""
    if hi < lo:
        return 0
    return (lo + hi) * (hi - lo + 1) // 2


def clamped_linear_sum(x0: int, x1: int, cap: Optional[int]) -> int:
    """sum_{x = x0}^{x1} min(cap, max(0, x)) (cap None = no upper clamp); 0 when x1 < x0."""
    if x1 < x0:
        return 0
    lo = max(x0, 1)
    if cap is None:
        return _sum_range(lo, x1)
    if cap <= 0:
        return 0
    total = _sum_range(lo, min(x1, cap))             # terms 1..cap taken as they are
    n_capped = x1 - max(x0, cap + 1) + 1            # terms above cap count cap each
    if n_capped > 0:
        total += cap * n_capped
    return total


def dense_keys_total(sq: int, sk: int, causal: bool) -> int:
    """Keys attended summed over the Sq rows of one (batch, head). Causal is end-aligned: row i
    sees keys j <= Sk - Sq + i (a row with p < 0 sees none)."""
    if sq <= 0 or sk <= 0:
        return 0
    if not causal:
        return sq * sk
    # keys of row i = clamp(p + 1, 0, Sk) with p = Sk - Sq + i
    return clamped_linear_sum(sk - sq + 1, sk, sk)


def dense_keys_per_row(sq: int, sk: int, causal: bool) -> List[int]:
    """Brute force of :func:`dense_keys_total` row by row (tests, small shapes)."""
    return [sk if not causal else min(sk, max(0, sk - sq + i + 1)) for i in range(sq)]


def sparsek_keys_per_row(sq: int, sk: int, k_select: int, window: int) -> List[int]:
    """|W_p| + |Sel_p| for each query row (SPEC section 1), brute force."""
    rows = []
    for i in range(sq):
        p = sk - sq + i
        w = min(window, p + 1) if window > 0 else 0
        n_p = max(0, p - window + 1) if window > 0 else p + 1
        rows.append(w + min(k_select, n_p))
    return rows


def sparsek_keys_total(sq: int, sk: int, k_select: int, window: int) -> int:
    """sum over rows of |W_p| + |Sel_p|: W_p = {max(0, p-window+1) <= j <= p}, C_p = {j <=
    p - window} (j <= p when window = 0), |Sel_p| = min(k_select, |C_p|). Exact, O(1)."""
    if sq <= 0 or sk <= 0:
        return 0
    if sq > sk:
        raise ValueError(f"sparsek needs Sq <= Sk, got Sq={sq}, Sk={sk}")
    p0, p1 = sk - sq, sk - 1
    total = 0
    if window > 0:
        total += clamped_linear_sum(p0 + 1, p1 + 1, window)                       # |W_p|
        total += clamped_linear_sum(p0 - window + 1, p1 - window + 1, k_select)   # |Sel_p|
    else:
        total += clamped_linear_sum(p0 + 1, p1 + 1, k_select)
    return total


def block_packed_keys(n_keys: int, block: int = FLEX_BLOCK) -> int:
    """Keys per query of the block-packed FlexAttention mask: ``n_keys`` rounded up to whole
    blocks (at least one block)."""
    return max(1, -(-max(n_keys, 1) // block)) * block


def block_packed_keys_per_row(sq: int, sk: int, n_keys: int,
                              block: int = FLEX_BLOCK) -> List[int]:
    """Keys attended per row by the block-packed mask: the query's own 128-block of absolute
    positions and the ``nb - 1`` blocks before it, all whole (the best case for a block-sparse
    kernel: every visited block is full, no mask evaluation), ``nb = ceil(n_keys / block)``."""
    nb = block_packed_keys(n_keys, block) // block
    out = []
    for i in range(sq):
        p = sk - sq + i
        qb = p // block
        lo, hi = max(0, qb - nb + 1) * block, min(sk, (qb + 1) * block)
        out.append(max(0, hi - lo))
    return out


def block_packed_keys_total(sq: int, sk: int, n_keys: int, block: int = FLEX_BLOCK) -> int:
    """Sum of :func:`block_packed_keys_per_row`, computed per block of rows (O(Sq / block))."""
    if sq <= 0 or sk <= 0:
        return 0
    nb = block_packed_keys(n_keys, block) // block
    p0, p1 = sk - sq, sk - 1
    total = 0
    for qb in range(p0 // block, p1 // block + 1):
        rows = min(p1, (qb + 1) * block - 1) - max(p0, qb * block) + 1
        lo, hi = max(0, qb - nb + 1) * block, min(sk, (qb + 1) * block)
        total += rows * max(0, hi - lo)
    return total


def attention_flops(shape: Shape, keys_total: int) -> int:
    """Useful FLOPs: 2 GEMMs (QK^T and PV) of 2 FLOPs per MAC over the attended keys, for every
    (batch, query head): 4 * B * H * keys_total * D."""
    return 4 * shape.B * shape.H * keys_total * shape.D


def io_bytes(shape: Shape) -> int:
    """q, k, v read once + o written once."""
    qo = 2 * shape.B * shape.Sq * shape.H * shape.D
    kv = 2 * shape.B * shape.Sk * shape.Hkv * shape.D
    return (qo + kv) * shape.elem_bytes


# ---------------------------------------------------------------------------------------------
# workload lists
# ---------------------------------------------------------------------------------------------

DENSE_IMPLS = ("sdpa_default", "bsk_dense", "sdpa_cudnn", "sdpa_flash", "sdpa_efficient",
               "fa4", "xformers", "flex_dense", "flex_dense_flash")
CAUSAL_IMPLS = ("sdpa_default", "bsk_dense_causal", "sdpa_cudnn", "sdpa_flash",
                "sdpa_efficient", "fa4", "xformers", "flex_causal", "flex_causal_flash")
SPARSEK_IMPLS = ("bsk_sparsek", "flex_token_level", "flex_token_level_flash",
                 "flex_block_packed", "flex_block_packed_flash")
DECODE_IMPLS = ("sdpa_default", "bsk_dense", "bsk_sparsek", "sdpa_cudnn", "sdpa_flash",
                "sdpa_efficient", "fa4", "xformers")
SWEEP_SPARSEK_IMPLS = ("bsk_sparsek", "flex_token_level", "flex_block_packed")
SWEEP_CAUSAL_IMPLS = ("sdpa_default", "bsk_dense_causal", "sdpa_cudnn")
SWEEP_DENSE_IMPLS = ("sdpa_default", "bsk_dense", "sdpa_cudnn")
DENSE_SWEEP_S = (1024, 2048, 8192, 16384)


def sparsek_name(k_select: int, window: int, suffix: str = "") -> str:
    return f"sparsek_k{k_select}_w{window}{suffix}"


def scaled_batch(base_b: int, base_s: int, s: int, minimum: int = 1) -> int:
    """B for sequence length s keeping B*S (tokens, hence memory of q/k/v/o) constant."""
    return max(minimum, (base_b * base_s) // max(s, 1))


def _shape(d: dict, dtype: str, s: Optional[int] = None, b: Optional[int] = None,
           hkv: Optional[int] = None) -> Shape:
    s = d["S"] if s is None else s
    return Shape(B=d["B"] if b is None else b, H=d["H"], Hkv=d["Hkv"] if hkv is None else hkv,
                 Sq=s, Sk=s, D=d["D"], dtype=dtype)


def build_workloads(quick: bool = False, sweep: bool = False, decode: bool = True,
                    dtype: str = "float16") -> List[Workload]:
    """The workloads of one run, in measuring order: seed shape (dense_causal first: it holds
    the baseline), tier-origin shape, decode, then the optional sweep. ``quick`` shrinks every
    shape to a smoke size (B2 H8) so the whole script runs in about a minute."""
    seed = dict(SEED)
    tier = dict(TIER_ORIGIN)
    ctx = DECODE_CONTEXT
    if quick:
        seed.update(B=2, H=8, Hkv=8, S=1024)
        tier.update(B=2, H=8, Hkv=8)
        ctx = 1024
    ws: List[Workload] = []
    s_seed = _shape(seed, dtype)
    ws.append(Workload("dense_causal", "dense", "seed", s_seed, causal=True, impls=CAUSAL_IMPLS))
    ws.append(Workload(sparsek_name(SEED_K, SEED_W), "sparsek", "seed", s_seed,
                       causal=True, k_select=SEED_K, window=SEED_W, impls=SPARSEK_IMPLS))
    ws.append(Workload("dense", "dense", "seed", s_seed, causal=False, impls=DENSE_IMPLS))

    s_tier = _shape(tier, dtype)
    ws.append(Workload("dense_causal", "dense", "tier_origin", s_tier, causal=True,
                       impls=CAUSAL_IMPLS))
    ws.append(Workload(sparsek_name(TIER_K, TIER_W), "sparsek", "tier_origin", s_tier,
                       causal=True, k_select=TIER_K, window=TIER_W,
                       impls=("bsk_sparsek", "flex_token_level", "flex_block_packed")))
    ws.append(Workload("dense", "dense", "tier_origin", s_tier, causal=False,
                       impls=tuple(i for i in DENSE_IMPLS if not i.startswith("flex"))))

    if decode:
        for n in (ctx, SEED_K + SEED_W):
            sh = Shape(B=seed["B"], H=seed["H"], Hkv=seed["Hkv"], Sq=1, Sk=n, D=seed["D"],
                       dtype=dtype)
            impls = DECODE_IMPLS if n == ctx else tuple(i for i in DECODE_IMPLS
                                                        if i != "bsk_sparsek")
            note = ("dense attention of one new token over the full context; bsk_sparsek: "
                    f"SparseK k={SEED_K} window={SEED_W} over the same context "
                    "(selection included)") if n == ctx else (
                    f"dense attention over a constant-size cache of k+window = {n} entries "
                    "(what SparseK decode reads per token)")
            ws.append(Workload(f"decode_ctx{n}", "decode", "decode", sh, causal=False,
                               k_select=SEED_K if n == ctx else None,
                               window=SEED_W if n == ctx else None, impls=impls, note=note))

    if sweep:
        ws.extend(sweep_workloads(seed, dtype))
    return ws


def sweep_workloads(seed: dict, dtype: str) -> List[Workload]:
    """k in {64, 256, 1024} (window 256), window in {0, 256, 1024} (k 256), S in {4096, 16384,
    65536} (k 256, window 256; B scaled so B*S stays at the seed's token count), and GQA
    (Hkv = H/12). The headline case (k256 w256 S4096) is the seed workload, not repeated.
    Every new shape gets a dense_causal workload for its SDPA reference. Then dense attention,
    non-causal and causal beside SDPA cuDNN, at S in {1024, 2048, 8192, 16384} (B scaled the
    same way), at D = 64 and in the other 16-bit dtype (the seed shape otherwise)."""
    ws: List[Workload] = []
    base = _shape(seed, dtype)
    for k in (64, 256, 1024):
        if k != SEED_K:
            ws.append(Workload(sparsek_name(k, SEED_W), "sparsek", "sweep", base, causal=True,
                               k_select=k, window=SEED_W, impls=SWEEP_SPARSEK_IMPLS))
    for w in (0, 256, 1024):
        if w != SEED_W:
            ws.append(Workload(sparsek_name(SEED_K, w), "sparsek", "sweep", base, causal=True,
                               k_select=SEED_K, window=w, impls=SWEEP_SPARSEK_IMPLS))
    for s in (4096, 16384, 65536):
        if s == seed["S"]:
            continue
        sh = _shape(seed, dtype, s=s, b=scaled_batch(seed["B"], seed["S"], s))
        ws.append(Workload(f"dense_causal_S{s}", "dense", "sweep", sh, causal=True,
                           impls=SWEEP_CAUSAL_IMPLS))
        ws.append(Workload(sparsek_name(SEED_K, SEED_W, f"_S{s}"), "sparsek", "sweep", sh,
                           causal=True, k_select=SEED_K, window=SEED_W,
                           impls=SWEEP_SPARSEK_IMPLS))
    hkv = max(1, seed["H"] // 12)
    if seed["H"] % hkv == 0 and hkv != seed["H"]:
        sh = _shape(seed, dtype, hkv=hkv)
        ws.append(Workload(f"dense_causal_gqa{hkv}", "dense", "sweep", sh, causal=True,
                           impls=SWEEP_CAUSAL_IMPLS))
        ws.append(Workload(sparsek_name(SEED_K, SEED_W, f"_gqa{hkv}"), "sparsek", "sweep", sh,
                           causal=True, k_select=SEED_K, window=SEED_W,
                           impls=SWEEP_SPARSEK_IMPLS))
    have = {w.name for w in ws}
    other = "bfloat16" if dtype == "float16" else "float16"
    dense_shapes = [(f"_S{s}", _shape(seed, dtype, s=s, b=scaled_batch(seed["B"], seed["S"], s)))
                    for s in DENSE_SWEEP_S]
    dense_shapes.append(("_d64", Shape(B=seed["B"], H=seed["H"], Hkv=seed["Hkv"], Sq=seed["S"],
                                       Sk=seed["S"], D=64, dtype=dtype)))
    dense_shapes.append((f"_{DTYPE_SHORT[other]}", _shape(seed, other)))
    for suffix, sh in dense_shapes:
        ws.append(Workload(f"dense{suffix}", "dense", "sweep", sh, causal=False,
                           impls=SWEEP_DENSE_IMPLS))
        if f"dense_causal{suffix}" not in have:  # the SparseK S sweep has S = 16384's
            ws.append(Workload(f"dense_causal{suffix}", "dense", "sweep", sh, causal=True,
                               impls=SWEEP_CAUSAL_IMPLS))
    return ws


def _match_any(patterns: Sequence[str], *names: str) -> bool:
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


def split_patterns(spec: Optional[str]) -> List[str]:
    return [p.strip() for p in (spec or "").split(",") if p.strip()]


def filter_workloads(ws: Iterable[Workload], workloads: Optional[str] = None,
                     impls: Optional[str] = None,
                     skip_impls: Optional[str] = None) -> List[Workload]:
    """``workloads``: comma list of fnmatch patterns against a workload's name or id
    ("dense", "sparsek*", "tier_origin/*"); ``impls`` / ``skip_impls``: patterns against
    implementation names. Workloads left with no implementation are dropped."""
    wp, ip, sp = split_patterns(workloads), split_patterns(impls), split_patterns(skip_impls)
    out = []
    for w in ws:
        if wp and not _match_any(wp, w.name, w.id):
            continue
        keep = tuple(i for i in w.impls if (not ip or _match_any(ip, i))
                     and not (sp and _match_any(sp, i)))
        if not keep:
            continue
        out.append(Workload(w.name, w.kind, w.section, w.shape, w.causal, w.k_select,
                            w.window, keep, w.note))
    return out


def impl_keys_total(w: Workload, impl: str) -> int:
    """Keys attended (summed over rows) by ``impl`` on ``w``: the workload's own count, except
    the block-packed FlexAttention mask, which attends whole blocks."""
    s = w.shape
    if w.kind == "sparsek" and impl.startswith("flex_block_packed"):
        return block_packed_keys_total(s.Sq, s.Sk, w.k_select + w.window)
    if w.kind == "decode" and impl == "bsk_sparsek":
        return sparsek_keys_total(s.Sq, s.Sk, w.k_select, w.window)
    return w.keys_total()


def shape_key(shape: Shape) -> Tuple:
    return (shape.B, shape.H, shape.Hkv, shape.Sq, shape.Sk, shape.D, shape.dtype)


def unique_shapes(ws: Iterable[Workload]) -> Dict[Tuple, Shape]:
    out: Dict[Tuple, Shape] = {}
    for w in ws:
        out.setdefault(shape_key(w.shape), w.shape)
    return out

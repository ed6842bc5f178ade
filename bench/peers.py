"""The implementations the benchmark times: PyTorch SDPA per backend, FlexAttention (dense,
causal, the SparseK selection as a token-level mask, and a block-packed best case),
xFormers, FlashAttention-4, and this project's kernels.

Each ``build_<impl>`` returns a zero-argument callable that runs one forward pass and returns
the output in BSHD layout (a view where the implementation works in BHSD), or raises
:class:`Unavailable` with the row's status ("not installed", "not implemented", "kernel not
built", "fallback", "n/a"). Nothing here times anything.

The FlexAttention mask pieces (``sparsek_mask_mod``, ``block_packed_mask_mod``,
``causal_mask_mod``, ``build_block_mask``) are plain torch and run on CPU, so the tests check
them against the reference selection and torch's own ``create_block_mask``.
"""

from __future__ import annotations

import importlib
import math
import time
import warnings
from typing import Callable, Dict, Optional

FLEX_BLOCK = 128


class Unavailable(Exception):
    """An implementation that cannot run here; ``status`` becomes the row's status."""

    def __init__(self, status: str, message: str = ""):
        super().__init__(message or status)
        self.status = status
        self.message = message


# ---------------------------------------------------------------------------------------------
# what is importable
# ---------------------------------------------------------------------------------------------


def _dist_version(*names: str) -> Optional[str]:
    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover
        return None
    for n in names:
        try:
            return metadata.version(n)
        except Exception:
            continue
    return None


def peer_availability() -> Dict[str, dict]:
    """{peer: {"importable": bool, "version": str | None, "error": str | None}} for
    FlexAttention, xFormers and FlashAttention-4 (``flash_attn.cute``). Never raises."""
    out: Dict[str, dict] = {}

    def probe(key, module, version_fn):
        try:
            mod = importlib.import_module(module)
            out[key] = dict(importable=True, version=version_fn(mod), error=None)
        except Exception as e:  # ImportError, or a broken install raising anything else
            out[key] = dict(importable=False, version=None,
                            error=f"{type(e).__name__}: {e}"[:300])

    probe("flex_attention", "torch.nn.attention.flex_attention",
          lambda m: "torch " + __import__("torch").__version__)
    probe("xformers", "xformers.ops",
          lambda m: getattr(importlib.import_module("xformers"), "__version__", None)
          or _dist_version("xformers"))
    probe("flash_attn_4", "flash_attn.cute",
          lambda m: _dist_version("flash-attn-4", "flash_attn_4", "flash-attn-cute",
                                  "flash-attn", "flash_attn")
          or getattr(importlib.import_module("flash_attn"), "__version__", None))
    return out


def bsk_state():
    """(module or None, status, message): status "ok" when the sm_90a kernels can run here,
    "kernel not built" when the extension is missing or has no kernels for this GPU, "error"
    when the package itself does not import."""
    try:
        import blackwell_sparsek as bsk  # noqa: PLC0415
    except Exception as e:
        return None, "error", f"import blackwell_sparsek failed: {type(e).__name__}: {e}"
    try:
        from blackwell_sparsek import _backend  # noqa: PLC0415
        C = _backend.extension()
        if C is None:
            return bsk, "kernel not built", (f"blackwell_sparsek._C does not import: "
                                             f"{_backend.extension_error()}")
        import torch  # noqa: PLC0415
        if not torch.cuda.is_available():
            return bsk, "kernel not built", "no CUDA device"
        dev = torch.cuda.current_device()
        if not bool(C.cuda_kernels_available(dev)):
            cap = torch.cuda.get_device_capability(dev)
            return bsk, "kernel not built", (f"_C.cuda_kernels_available({dev}) is False "
                                             f"(sm_{cap[0]}{cap[1]}, or built without sm_90a)")
    except Exception as e:
        return bsk, "kernel not built", f"{type(e).__name__}: {e}"
    return bsk, "ok", ""


# ---------------------------------------------------------------------------------------------
# FlexAttention masks (plain torch; CPU-testable)
# ---------------------------------------------------------------------------------------------


def causal_mask_mod(sq: int, sk: int):
    """End-aligned causal: row q sees keys kv <= Sk - Sq + q."""
    off = sk - sq

    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + off
    return mask_mod


def sparsek_mask_mod(scores_bhk, theta_val, theta_idx, sq: int, sk: int, window: int,
                     group: int = 1):
    """The SparseK key set of each query as a token-level mask (no gates):
    kv in W_p  or  (kv in C_p and (u_kv, kv) >= theta_p lexicographically), p = Sk - Sq + q.

    ``scores_bhk`` [B, Hkv, Sk] (the scores transposed, float32), ``theta_val`` /
    ``theta_idx`` [B, Hkv, Sq] from the SparseK operator ((-inf, -1) when every candidate is
    selected; (+inf, -1) when k = 0). Query head h reads kv head h // group."""
    off, w, g = sk - sq, int(window), int(group)

    def mask_mod(b, h, q_idx, kv_idx):
        hk = h // g
        p = q_idx + off
        u = scores_bhk[b, hk, kv_idx]
        tv = theta_val[b, hk, q_idx]
        ti = theta_idx[b, hk, q_idx]
        ge = (u > tv) | ((u == tv) & (kv_idx >= ti))
        if w > 0:
            in_win = (kv_idx <= p) & (kv_idx > p - w)
            return in_win | ((kv_idx <= p - w) & ge)
        return (kv_idx <= p) & ge
    return mask_mod


def sparsek_ranks(scores, theta_val, theta_idx):
    """(key_rank [B, Hkv, Sk] int32, theta_rank [B, Hkv, Sq] int32) for the rank form of the
    SparseK mask: key_rank is each key's position in the order of (u_j, j) descending (ties:
    the more recent key first) and theta_rank the position of theta_p, so that
    (u_j, j) >= theta_p  <=>  key_rank[j] <= theta_rank[p]. Rows where every candidate is
    selected (theta = (-inf, -1)) get Sk, rows with none (k = 0, or NaN scores) get -1."""
    import torch
    B, sk, hkv = scores.shape
    u = scores.permute(0, 2, 1).to(torch.float64)                       # [B, Hkv, Sk]
    u = torch.where(torch.isnan(u), torch.full_like(u, float("inf")), u)
    _, perm = torch.sort(u.flip(-1), dim=-1, descending=True, stable=True)
    order = (sk - 1) - perm                                             # key at each rank
    key_rank = torch.empty_like(order)
    key_rank.scatter_(-1, order, torch.arange(sk, device=u.device).expand_as(order))
    ti = theta_idx.to(torch.int64)
    tr = key_rank.gather(-1, ti.clamp(min=0))
    all_sel = (ti < 0) & (theta_val == float("-inf"))
    tr = torch.where(ti >= 0, tr, torch.where(all_sel, torch.full_like(tr, sk),
                                              torch.full_like(tr, -1)))
    return key_rank.to(torch.int32).contiguous(), tr.to(torch.int32).contiguous()


def sparsek_rank_mask_mod(key_rank, theta_rank, sq: int, sk: int, window: int,
                          group: int = 1):
    """The same key set as :func:`sparsek_mask_mod` from integer ranks (one int32 gather per
    key, one per query, one comparison): the cheapest exact encoding for FlexAttention."""
    off, w, g = sk - sq, int(window), int(group)

    def mask_mod(b, h, q_idx, kv_idx):
        hk = h // g
        p = q_idx + off
        sel = key_rank[b, hk, kv_idx] <= theta_rank[b, hk, q_idx]
        if w > 0:
            return ((kv_idx <= p) & (kv_idx > p - w)) | ((kv_idx <= p - w) & sel)
        return (kv_idx <= p) & sel
    return mask_mod


def block_packed_mask_mod(sq: int, sk: int, n_keys: int, block: int = FLEX_BLOCK):
    """Whole blocks: the query's own block of absolute positions and the nb - 1 before it,
    nb = ceil(n_keys / block). Every visited block is full (no mask evaluation in the kernel):
    the best case for a block-sparse kernel with the same key count as SparseK."""
    off, bs = sk - sq, int(block)
    nb = max(1, -(-max(int(n_keys), 1) // bs))

    def mask_mod(b, h, q_idx, kv_idx):
        qb = (q_idx + off) // bs
        kb = kv_idx // bs
        return (kb <= qb) & (kb > qb - nb)
    return mask_mod


def dense_to_ordered(dense):
    """(num_blocks [.., rows] int32, indices [.., rows, cols] int32) of a dense block bool
    tensor, the listed blocks first in increasing column order (torch's own convention)."""
    import torch
    d = dense.to(torch.int32)
    num = d.sum(dim=-1).to(torch.int32)
    idx = torch.argsort(d, dim=-1, descending=True, stable=True).to(torch.int32)
    return num.contiguous(), idx.contiguous()


def block_mask_dense(mask_mod, B: int, H: int, sq: int, sk: int, device,
                     block: int = FLEX_BLOCK, max_elems: int = 1 << 26):
    """(partial, full) [B, H, nqb, nkb] bool: which (q block, kv block) tiles hold some / only
    allowed pairs, evaluating ``mask_mod`` on broadcast index tensors chunk by chunk (never the
    whole B*H*Sq*Sk mask at once; at most ~``max_elems`` elements per chunk). Padding beyond
    Sq / Sk counts as masked (so an edge block is never full), as in torch's create_block_mask."""
    import torch
    nqb, nkb = -(-sq // block), -(-sk // block)
    skp = nkb * block
    kv = torch.arange(skp, device=device)
    kv_ok = (kv < sk).view(1, 1, 1, skp)
    kv_c = kv.clamp(max=sk - 1).view(1, 1, 1, skp)
    full = torch.zeros((B, H, nqb, nkb), dtype=torch.bool, device=device)
    partial = torch.zeros_like(full)
    per_qblock = H * block * skp
    if per_qblock <= max_elems:
        hc, qbc = H, max(1, max_elems // per_qblock)
    else:
        hc, qbc = max(1, max_elems // (block * skp)), 1
    whole = block * block
    for b in range(B):
        bt = torch.full((1, 1, 1, 1), b, dtype=torch.long, device=device)
        for h0 in range(0, H, hc):
            h1 = min(H, h0 + hc)
            ht = torch.arange(h0, h1, device=device).view(1, -1, 1, 1)
            for qb0 in range(0, nqb, qbc):
                qb1 = min(nqb, qb0 + qbc)
                q = torch.arange(qb0 * block, qb1 * block, device=device).view(1, 1, -1, 1)
                m = mask_mod(bt, ht, q.clamp(max=sq - 1), kv_c)
                m = (m & (q < sq) & kv_ok).expand(1, h1 - h0, (qb1 - qb0) * block, skp)
                cnt = m.reshape(h1 - h0, qb1 - qb0, block, nkb, block).sum(dim=(2, 4))
                full[b, h0:h1, qb0:qb1] = cnt == whole
                partial[b, h0:h1, qb0:qb1] = (cnt > 0) & (cnt < whole)
    return partial, full


def build_block_mask(mask_mod, B: int, H: int, sq: int, sk: int, device,
                     block: int = FLEX_BLOCK, max_elems: int = 1 << 26):
    """A FlexAttention BlockMask for ``mask_mod`` (B / H = 1 broadcast when the mask does not
    depend on them), built without materialising the full mask."""
    from torch.nn.attention.flex_attention import BlockMask
    partial, full = block_mask_dense(mask_mod, B, H, sq, sk, device, block, max_elems)
    kv_num, kv_idx = dense_to_ordered(partial)
    f_num, f_idx = dense_to_ordered(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, f_num, f_idx, BLOCK_SIZE=(block, block),
                                    mask_mod=mask_mod, seq_lengths=(sq, sk))


def block_mask_stats(block_mask) -> dict:
    """Visited / full / partial block counts of a BlockMask (for the report's notes)."""
    try:
        part = int(block_mask.kv_num_blocks.sum().item())
        full = int(block_mask.full_kv_num_blocks.sum().item()) \
            if block_mask.full_kv_num_blocks is not None else 0
        b, h, nq = block_mask.kv_num_blocks.shape
        nk = -(-block_mask.seq_lengths[1] // block_mask.BLOCK_SIZE[1])
        total = b * h * nq * nk
        return dict(partial_blocks=part, full_blocks=full, total_blocks=total,
                    skipped_fraction=1.0 - (part + full) / total if total else None)
    except Exception:
        return {}


def sparsek_theta(scores, sq: int, k_select: int, window: int, prefer_kernel: bool = False):
    """(theta_val, theta_idx, how, seconds): the k-th selected (u, j) per query [B, Hkv, Sq]
    from the exact reference operator (float64), or from the project's selection kernel
    (``blackwell_sparsek.sparsek_operator``) when ``prefer_kernel`` (large shapes)."""
    import torch
    t0 = time.perf_counter()
    how = "reference (float64)"
    res = None
    if prefer_kernel:
        try:
            import blackwell_sparsek as bsk
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = bsk.sparsek_operator(scores, sq, k_select, window)
            how = "blackwell_sparsek.sparsek_operator"
        except Exception:
            res = None
    if res is None:
        from blackwell_sparsek import reference as ref
        B, sk, hkv = scores.shape
        # query chunk: ~8 GB of float64/int64 temporaries (N * c * Sk * ~40 bytes) on a GPU
        # instead of the reference's CPU-friendly 128 MB: far fewer launches (at S = 65536 the
        # 128 MB chunks are launch-bound for minutes)
        chunk = None
        if scores.is_cuda:
            chunk = max(1, min(sq, int(8e9 // (B * hkv * (sk + 1) * 40))))
        res = ref.sparsek_operator_ref(scores, sq, k_select, window, chunk_q=chunk)
        how = "reference (float64)"
    _, tv, ti, _ = res
    if scores.is_cuda:
        torch.cuda.synchronize()
    return tv.to(torch.float32).contiguous(), ti.to(torch.int32).contiguous(), how, \
        time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# callables per implementation (GPU side)
# ---------------------------------------------------------------------------------------------


class Inputs:
    """Inputs of one shape: q [B, Sq, H, D], k, v [B, Sk, Hkv, D] (BSHD, contiguous), scores
    [B, Sk, Hkv] float32, scale."""

    def __init__(self, q, k, v, scores, scale: float):
        self.q, self.k, self.v, self.scores, self.scale = q, k, v, scores, scale

    @property
    def bhsd(self):
        return tuple(t.transpose(1, 2) for t in (self.q, self.k, self.v))


def make_inputs(shape, device="cuda", seed: int = 0, slope: float = 1.0) -> Inputs:
    """Random normal q, k, v (never zeros) and a learned-like score: randn + a mild slope
    towards recent keys (``slope * j / Sk``), float32 [B, Sk, Hkv]."""
    import torch
    dt = getattr(torch, shape.dtype)
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn((shape.B, shape.Sq, shape.H, shape.D), device=device, dtype=dt, generator=g)
    k = torch.randn((shape.B, shape.Sk, shape.Hkv, shape.D), device=device, dtype=dt,
                    generator=g)
    v = torch.randn((shape.B, shape.Sk, shape.Hkv, shape.D), device=device, dtype=dt,
                    generator=g)
    pos = torch.arange(shape.Sk, device=device, dtype=torch.float32) / max(shape.Sk, 1)
    scores = torch.randn((shape.B, shape.Sk, shape.Hkv), device=device, dtype=torch.float32,
                         generator=g) + slope * pos[None, :, None]
    return Inputs(q, k, v, scores.contiguous(), 1.0 / math.sqrt(shape.D))


_SDPA_BACKENDS = {"sdpa_cudnn": "CUDNN_ATTENTION", "sdpa_flash": "FLASH_ATTENTION",
                  "sdpa_efficient": "EFFICIENT_ATTENTION", "sdpa_default": None}


def build_sdpa(impl: str, w, x: Inputs) -> Callable:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    s = w.shape
    causal = bool(w.causal)
    if causal and s.Sq != s.Sk:
        raise Unavailable("n/a", "SDPA's is_causal is top-left aligned; Sq != Sk not comparable")
    qh, kh, vh = x.bhsd
    kw = dict(is_causal=causal, scale=x.scale)
    if s.H != s.Hkv:
        kw["enable_gqa"] = True
    name = _SDPA_BACKENDS[impl]
    if name is None:
        def fn():
            return F.scaled_dot_product_attention(qh, kh, vh, **kw).transpose(1, 2)
        return fn
    backend = getattr(SDPBackend, name)

    def fn():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(qh, kh, vh, **kw).transpose(1, 2)
    return fn


def build_fa4(w, x: Inputs, peers: dict) -> Callable:
    if not peers.get("flash_attn_4", {}).get("importable"):
        raise Unavailable("not installed", "flash-attn-4 (flash_attn.cute) is not importable")
    from flash_attn.cute import flash_attn_func
    causal = bool(w.causal)
    q, k, v, scale = x.q, x.k, x.v, x.scale

    def fn():
        r = flash_attn_func(q, k, v, softmax_scale=scale, causal=causal)
        return r[0] if isinstance(r, (tuple, list)) else r
    return fn


def build_xformers(w, x: Inputs, peers: dict) -> Callable:
    if not peers.get("xformers", {}).get("importable"):
        raise Unavailable("not installed", "xformers is not importable")
    import xformers.ops as xops
    s = w.shape
    if s.H != s.Hkv:
        raise Unavailable("n/a", "GQA needs xFormers' 5-D layout (not wired here)")
    bias = None
    if w.causal:
        bias = xops.LowerTriangularMask() if s.Sq == s.Sk else \
            xops.fmha.attn_bias.LowerTriangularFromBottomRightMask()
    q, k, v, scale = x.q, x.k, x.v, x.scale

    def fn():
        return xops.memory_efficient_attention(q, k, v, attn_bias=bias, scale=scale)
    return fn


_FLEX_COMPILED = None


def flex_compiled():
    """torch.compile(flex_attention) once per process (static shapes, generous recompile
    limits so that the many masks of one run never fall back to the eager path)."""
    global _FLEX_COMPILED
    if _FLEX_COMPILED is None:
        import torch
        import torch._dynamo
        from torch.nn.attention.flex_attention import flex_attention
        cfg = torch._dynamo.config
        for name, val in (("cache_size_limit", 512), ("recompile_limit", 512),
                          ("accumulated_cache_size_limit", 8192),
                          ("accumulated_recompile_limit", 8192)):
            if hasattr(cfg, name):
                try:
                    setattr(cfg, name, val)
                except Exception:
                    pass
        _FLEX_COMPILED = torch.compile(flex_attention, dynamic=False)
    return _FLEX_COMPILED


def build_flex(impl: str, w, x: Inputs, peers: dict, block_mask=None) -> Callable:
    """FlexAttention on the BHSD view; ``*_flash`` rows use kernel_options BACKEND=FLASH
    (needs flash-attn-4). ``block_mask`` None = dense."""
    if not peers.get("flex_attention", {}).get("importable"):
        raise Unavailable("not installed", "torch.nn.attention.flex_attention not importable")
    opts = None
    if impl.endswith("_flash"):
        if not peers.get("flash_attn_4", {}).get("importable"):
            raise Unavailable("not installed",
                              "FLASH backend needs flash-attn-4 (flash_attn.cute)")
        opts = {"BACKEND": "FLASH"}
    flex = flex_compiled()
    qh, kh, vh = x.bhsd
    s = w.shape
    kw = dict(block_mask=block_mask, scale=x.scale, enable_gqa=s.H != s.Hkv)
    if opts:
        kw["kernel_options"] = opts

    def fn():
        return flex(qh, kh, vh, **kw).transpose(1, 2)
    return fn


def _ref_calls(bsk) -> int:
    try:
        from blackwell_sparsek import _backend
        return sum(v for (kind, _), v in _backend.calls.items() if kind == "reference")
    except Exception:
        return 0


def guard_kernel(bsk, fn: Callable) -> Callable:
    """Run ``fn`` with the project's FallbackWarning turned into an error and the warn-once
    memory cleared, so that a kernel which is missing / not implemented raises (before the
    slow PyTorch path runs) instead of silently timing the fallback."""
    def guarded():
        FallbackWarning = getattr(bsk, "FallbackWarning", None)
        try:
            from blackwell_sparsek import _backend
            _backend.reset_warnings()
        except Exception:
            pass
        before = _ref_calls(bsk)
        with warnings.catch_warnings():
            if FallbackWarning is not None:
                warnings.simplefilter("error", FallbackWarning)
            try:
                out = fn()
            except Exception as e:
                if FallbackWarning is not None and isinstance(e, FallbackWarning):
                    if _not_implemented_warned() or "not implemented" in str(e).lower():
                        raise Unavailable("not implemented", str(e)) from None
                    raise Unavailable("fallback", str(e)) from None
                if isinstance(e, NotImplementedError):
                    raise Unavailable("not implemented", str(e)) from None
                raise
        if _ref_calls(bsk) != before:
            raise Unavailable("fallback", "the PyTorch implementation ran instead of a kernel")
        return out
    return guarded


def _not_implemented_warned() -> bool:
    """Did the last fallback warning come from a kernel raising NotImplementedError? (The
    project keys that warning "not_implemented:<op>"; the keys are cleared before each guarded
    call.)"""
    try:
        from blackwell_sparsek import _backend
        return any(str(k).startswith("not_implemented:") for k in _backend._warned)
    except Exception:
        return False


def build_bsk(impl: str, w, x: Inputs, bsk) -> Callable:
    q, k, v = x.q, x.k, x.v
    if impl in ("bsk_dense", "bsk_dense_causal"):
        causal = bool(w.causal)

        def fn():
            return bsk.attention(q, k, v, causal=causal, scale=x.scale)
        return fn
    if impl == "bsk_sparsek":
        ks, win, scores = int(w.k_select), int(w.window), x.scores

        def fn():
            return bsk.sparsek_attention(q, k, v, scores, k_select=ks, window=win,
                                         scale=x.scale)
        return fn
    raise Unavailable("n/a", f"unknown project implementation {impl}")


# ---------------------------------------------------------------------------------------------
# float32 references on a sample of heads
# ---------------------------------------------------------------------------------------------


def sample_spec(shape, nb: int = 2, nh: int = 2, rows: Optional[int] = None):
    """(nb, nh, nkv, r0): batches [0, nb), query heads [0, nh), kv heads [0, nkv) they read,
    query rows [r0, Sq) (the last ``rows``: with end-aligned queries the reference on those
    rows alone is exact)."""
    nb, nh = min(nb, shape.B), min(nh, shape.H)
    g = shape.H // shape.Hkv
    nkv = (nh - 1) // g + 1
    if nh % nkv != 0 or (nh // nkv) != min(g, nh):
        nh, nkv = 1, 1
    r0 = 0 if rows is None or rows >= shape.Sq else shape.Sq - rows
    return nb, nh, nkv, r0


def dense_reference(x: Inputs, causal: bool, spec, chunk: int = 512, mask_mod=None):
    """float32 dense attention (end-aligned causal) on the sample: [nb, Sq - r0, nh, D].
    With ``mask_mod`` (FlexAttention signature, evaluated on broadcast index tensors) only the
    allowed keys count: the ungated reference of a FlexAttention mask."""
    import torch
    nb, nh, nkv, r0 = spec
    q = x.q[:nb, r0:, :nh].float().permute(0, 2, 1, 3)
    k = x.k[:nb, :, :nkv].float().permute(0, 2, 1, 3).repeat_interleave(nh // nkv, dim=1)
    v = x.v[:nb, :, :nkv].float().permute(0, 2, 1, 3).repeat_interleave(nh // nkv, dim=1)
    sq, sk = x.q.shape[1], x.k.shape[1]
    dev = q.device
    kv = torch.arange(sk, device=dev)
    outs = []
    for i0 in range(0, q.shape[2], chunk):
        qc = q[:, :, i0:i0 + chunk]
        c = qc.shape[2]
        s = (qc @ k.transpose(-1, -2)) * x.scale
        if causal:
            p = torch.arange(sk - sq + r0 + i0, sk - sq + r0 + i0 + c, device=dev)
            s = s.masked_fill(kv[None, :] > p[:, None], float("-inf"))
        if mask_mod is not None:
            rows = torch.arange(r0 + i0, r0 + i0 + c, device=dev).view(1, 1, -1, 1)
            allowed = mask_mod(torch.arange(nb, device=dev).view(-1, 1, 1, 1),
                               torch.arange(nh, device=dev).view(1, -1, 1, 1), rows,
                               kv.view(1, 1, 1, -1))
            s = s.masked_fill(~allowed.expand(s.shape), float("-inf"))
        outs.append(torch.softmax(s, dim=-1) @ v)
    return torch.cat(outs, dim=2).permute(0, 2, 1, 3)


def sparsek_reference(x: Inputs, k_select: int, window: int, spec):
    """float32 SparseK attention on the sample (blackwell_sparsek.reference)."""
    from blackwell_sparsek import reference as ref
    nb, nh, nkv, r0 = spec
    out, _ = ref.sparsek_attention_ref(x.q[:nb, r0:, :nh].float(), x.k[:nb, :, :nkv].float(),
                                       x.v[:nb, :, :nkv].float(),
                                       x.scores[:nb, :, :nkv].float(), int(k_select),
                                       int(window), x.scale)
    return out


def compare(out, ref, spec, rtol: float = 1e-3, atol: float = 2e-3) -> dict:
    """allclose / max / mean abs error of ``out`` (BSHD, full) on the sample vs ``ref``."""
    import torch
    nb, nh, nkv, r0 = spec
    o = out[:nb, r0:, :nh].float()
    if tuple(o.shape) != tuple(ref.shape):
        raise ValueError(f"output sample shape {tuple(o.shape)} != reference {tuple(ref.shape)}")
    err = (o - ref).abs()
    return dict(allclose=bool(torch.allclose(o, ref, rtol=rtol, atol=atol)),
                max_abs_err=float(err.max().item()) if err.numel() else 0.0,
                mean_abs_err=float(err.mean().item()) if err.numel() else 0.0)

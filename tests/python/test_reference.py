"""Tests of the pure-PyTorch reference (blackwell_sparsek.reference), CPU only.

The brute-force definitions below are written straight from SPEC section 1, per query, with
O(S^2) work and no shared code with the implementation: f(t) is summed directly at every
breakpoint, the selection is a Python sort, the attention a per-row softmax. They run on tiny
shapes only.
"""

import itertools
import math
import zlib

import numpy as np
import pytest
import torch

from blackwell_sparsek.reference import (
    attention_bwd_ref,
    attention_ref,
    sparsek_attention_bwd_ref,
    sparsek_attention_ref,
    sparsek_operator_ref,
    sparsek_selection_ref,
)

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
F64 = torch.float64
INF = math.inf


def seed_of(case):
    """A reproducible seed per test case (str hashes are salted per process)."""
    return zlib.crc32(repr(case).encode())


# ------------------------------------------------------------------------------------------
# brute-force definitions
# ------------------------------------------------------------------------------------------


def brute_query(u, p, k, window):
    """SparseK operator for one query at absolute position p: dict with tau, theta, n_active,
    the selection (sorted by (u, j) desc) and its gates. u: 1-D float64 numpy array."""
    hi = p - window + 1 if window > 0 else p + 1
    cand = list(range(max(hi, 0)))
    n = len(cand)
    # Convention for ordering only (it matters only when n_p <= k): NaN ranks as +inf.
    order = sorted(cand, key=lambda j: (INF if math.isnan(u[j]) else u[j], j), reverse=True)
    if n <= k:
        return dict(tau=-INF, theta=(-INF, -1), n_active=0, sel=order, gates=[1.0] * n,
                    dead=False)
    c = u[:hi]
    if not np.all(np.isfinite(c)):
        return dict(tau=math.nan, theta=(math.nan, -1), n_active=0, sel=[], gates=[],
                    dead=True)
    sel = order[:k]
    if k == 0:
        return dict(tau=float(c.max()), theta=(INF, -1), n_active=0, sel=[], gates=[],
                    dead=False)
    bps = np.unique(np.concatenate([c, c - 1.0]))
    f = np.clip(c[None, :] - bps[:, None], 0.0, 1.0).sum(1)
    r = int(np.argmax(f <= k))  # first (smallest) breakpoint with f <= k
    assert f[r] <= k and r > 0
    R, L = bps[r], bps[r - 1]
    if f[r] == k:
        tau = float(R)
    else:  # f is linear on [L, R]
        tau = float(L + (f[r - 1] - k) * (R - L) / (f[r - 1] - f[r]))
    n_active = int(((c > tau) & (c < tau + 1)).sum())
    gates = [float(np.clip(u[j] - tau, 0, 1)) for j in sel]
    return dict(tau=tau, theta=(float(u[sel[-1]]), sel[-1]), n_active=n_active, sel=sel,
                gates=gates, dead=False)


def brute_operator(scores, sq, k, window):
    """scores [B, Sk, Hkv] tensor -> nested lists [b][h][i] of brute_query dicts."""
    u = scores.detach().to(F64).numpy()
    B, Sk, Hkv = u.shape
    return [[[brute_query(u[b, :, h], Sk - sq + i, k, window) for i in range(sq)]
             for h in range(Hkv)] for b in range(B)]


def brute_sparsek_attention(q, k, v, scores, ksel, window, scale):
    q, k, v = (t.detach().to(F64).numpy() for t in (q, k, v))
    B, Sq, H, D = q.shape
    Sk, Hkv = k.shape[1], k.shape[2]
    G = H // Hkv
    ops = brute_operator(scores, Sq, ksel, window)
    out = np.zeros((B, Sq, H, v.shape[3]))
    lse = np.zeros((B, H, Sq))
    for b, i, h in itertools.product(range(B), range(Sq), range(H)):
        hk, p = h // G, Sk - Sq + i
        op = ops[b][hk][i]
        if op["dead"]:
            out[b, i, h] = math.nan
            lse[b, h, i] = math.nan
            continue
        win = list(range(max(0, p - window + 1), p + 1)) if window > 0 else []
        keys = win + op["sel"]
        g = np.array([1.0] * len(win) + op["gates"])
        s = scale * (k[b, keys, hk] @ q[b, i, h])
        m = s.max()
        lse[b, h, i] = m + math.log(np.exp(s - m).sum())
        out[b, i, h] = (np.exp(s - lse[b, h, i]) * g) @ v[b, keys, hk]
    return out, lse


def brute_attention(q, k, v, causal, scale):
    q, k, v = (t.detach().to(F64).numpy() for t in (q, k, v))
    B, Sq, H, D = q.shape
    Sk, Hkv = k.shape[1], k.shape[2]
    G = H // Hkv
    out = np.zeros((B, Sq, H, v.shape[3]))
    lse = np.full((B, H, Sq), -INF)
    for b, h in itertools.product(range(B), range(H)):
        s = scale * q[b, :, h] @ k[b, :, h // G].T  # [Sq, Sk]
        if causal:
            s = np.where(np.arange(Sk)[None, :] <= (Sk - Sq + np.arange(Sq))[:, None], s, -INF)
        for i in range(Sq):
            if np.isneginf(s[i]).all():
                continue
            m = s[i].max()
            lse[b, h, i] = m + math.log(np.exp(s[i] - m).sum())
            out[b, i, h] = np.exp(s[i] - lse[b, h, i]) @ v[b, :, h // G]
    return out, lse


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------


def make_scores(kind, B, Sk, Hkv, gen, dtype=F64):
    j = torch.arange(Sk, dtype=F64)[None, :, None]
    if kind == "normal":
        u = torch.randn(B, Sk, Hkv, generator=gen, dtype=F64) * 1.5
    elif kind == "ties":  # dyadic values: every sum is exact, so ties are real ties
        u = torch.randint(-6, 7, (B, Sk, Hkv), generator=gen).to(F64) / 4
    elif kind == "slope":  # a recency slope, as the scoring network adds
        u = torch.randn(B, Sk, Hkv, generator=gen, dtype=F64) * 0.4 + 0.07 * j
    elif kind == "const":
        u = torch.full((B, Sk, Hkv), 0.5, dtype=F64)
    elif kind == "gap":  # widely separated: many rows with n_active == 0
        u = torch.randn(B, Sk, Hkv, generator=gen, dtype=F64) * 20
    elif kind == "steps":  # integers: gaps of exactly 1, kinks hit exactly
        u = torch.randint(-3, 4, (B, Sk, Hkv), generator=gen).to(F64)
    else:
        raise ValueError(kind)
    return u.to(dtype)


# (kind, B, Sk, Hkv, Sq, k, window)
OP_CASES = [
    ("normal", 1, 1, 1, 1, 1, 0),
    ("normal", 1, 1, 1, 1, 0, 0),
    ("normal", 1, 1, 1, 1, 0, 1),
    ("normal", 2, 7, 2, 7, 2, 0),
    ("normal", 1, 7, 1, 3, 1, 2),
    ("normal", 1, 20, 3, 20, 0, 3),
    ("normal", 1, 20, 1, 20, 4, 1),
    ("normal", 1, 20, 2, 5, 4, 30),   # window > S
    ("normal", 1, 20, 1, 20, 50, 2),  # k > S
    ("normal", 1, 113, 2, 113, 9, 16),
    ("normal", 1, 113, 1, 40, 30, 0),
    ("ties", 2, 24, 2, 24, 3, 0),
    ("ties", 1, 40, 2, 40, 5, 4),
    ("ties", 1, 40, 1, 13, 1, 1),
    ("ties", 1, 113, 1, 113, 12, 8),
    ("slope", 1, 33, 2, 33, 4, 4),
    ("slope", 1, 113, 1, 100, 16, 0),
    ("const", 1, 12, 1, 12, 3, 2),
    ("const", 1, 12, 1, 12, 0, 0),
    ("gap", 1, 30, 2, 30, 3, 0),
    ("gap", 1, 30, 1, 30, 1, 5),
    ("steps", 1, 30, 2, 30, 4, 2),
    ("steps", 1, 30, 1, 30, 2, 0),
]


def case_id(c):
    return "{}-B{}-Sk{}-Hkv{}-Sq{}-k{}-w{}".format(*c)


def same(a, b):
    """Equal including inf/NaN placement."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(
        np.where(np.isnan(a), 0, a), np.where(np.isnan(b), 0, b))


def assert_close_nan(a, b, rtol, atol):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert np.array_equal(np.isnan(a), np.isnan(b)), "NaN placement differs"
    fin = ~np.isnan(a)
    assert np.array_equal(a[fin & np.isinf(a)], b[fin & np.isinf(a)]), "inf placement differs"
    m = fin & np.isfinite(a)
    np.testing.assert_allclose(a[m], b[m], rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------
# operator and selection vs brute force
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", OP_CASES, ids=case_id)
def test_operator_and_selection_bruteforce(case):
    kind, B, Sk, Hkv, Sq, k, window = case
    gen = torch.Generator().manual_seed(seed_of(case))
    scores = make_scores(kind, B, Sk, Hkv, gen)
    tau, tv, ti, na = sparsek_operator_ref(scores, Sq, k, window)
    idx, gate = sparsek_selection_ref(scores, Sq, k, window)
    assert tau.shape == (B, Hkv, Sq) and tau.dtype == F64 and tv.dtype == F64
    assert ti.dtype == torch.int32 and na.dtype == torch.int32
    assert idx.shape == (B, Sq, Hkv, k) and idx.dtype == torch.int64 and gate.dtype == F64
    ref = brute_operator(scores, Sq, k, window)
    for b, h, i in itertools.product(range(B), range(Hkv), range(Sq)):
        r = ref[b][h][i]
        where = f"b={b} h={h} i={i}"
        assert_close_nan([tau[b, h, i].item()], [r["tau"]], 1e-13, 1e-13)
        assert same([tv[b, h, i].item()], [r["theta"][0]]), where
        assert ti[b, h, i].item() == r["theta"][1], where
        assert na[b, h, i].item() == r["n_active"], where
        n = len(r["sel"])
        assert idx[b, i, h, :n].tolist() == r["sel"], where
        assert (idx[b, i, h, n:] == -1).all(), where
        if r["dead"]:
            assert torch.isnan(gate[b, i, h]).all(), where
        else:
            np.testing.assert_allclose(gate[b, i, h, :n].numpy(), r["gates"], rtol=0,
                                       atol=1e-13, err_msg=where)
            assert (gate[b, i, h, n:] == 0).all(), where


def test_gap_rounding_regression():
    """k-th and (k+1)-th scores >= 1 apart: tau is the (k+1)-th score exactly and n_active 0,
    even where fl(u_k - 1) + 1 != u_k makes f(u_k - 1) round just above k (a bisection over
    the breakpoints used to land on the wrong piece here)."""
    u = torch.tensor([51.5865, -39.3005, -21.3562, 3.38488730786012, 16.3849],
                     dtype=F64)[None, :, None]
    tau, tv, ti, na = sparsek_operator_ref(u, 1, 3, 0)
    assert tau.item() == u[0, 2, 0].item() and na.item() == 0
    assert tv.item() == u[0, 3, 0].item() and ti.item() == 3
    _, gate = sparsek_selection_ref(u, 1, 3, 0)
    assert (gate == 1).all()


@pytest.mark.parametrize("seed", range(6))
def test_operator_random_fuzz(seed):
    """Many small random configurations (incl. non-finite scores) against the brute force."""
    rng = np.random.default_rng(seed)
    for _ in range(25):
        kind = str(rng.choice(["normal", "ties", "slope", "const", "gap", "steps"]))
        Sk = int(rng.choice([1, 2, 3, 5, 8, 13, 21]))
        Sq, Hkv = int(rng.integers(1, Sk + 1)), int(rng.choice([1, 2]))
        k, window = int(rng.choice([0, 1, 2, 3, 5, 30])), int(rng.choice([0, 1, 2, 4, 30]))
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        scores = make_scores(kind, 1, Sk, Hkv, gen)
        if rng.random() < 0.25:
            scores[0, int(rng.integers(Sk)), int(rng.integers(Hkv))] = float(
                rng.choice([math.nan, INF, -INF]))
        chunk = [None, 1, 3][int(rng.integers(3))]
        tau, tv, ti, na = sparsek_operator_ref(scores, Sq, k, window, chunk_q=chunk)
        idx, gate = sparsek_selection_ref(scores, Sq, k, window, chunk_q=chunk)
        ref = brute_operator(scores, Sq, k, window)
        for h, i in itertools.product(range(Hkv), range(Sq)):
            r, where = ref[0][h][i], (kind, Sk, Sq, k, window, h, i)
            assert_close_nan([tau[0, h, i].item()], [r["tau"]], 1e-13, 1e-13)
            assert same([tv[0, h, i].item()], [r["theta"][0]]), where
            assert (ti[0, h, i].item(), na[0, h, i].item()) == (r["theta"][1], r["n_active"]), \
                where
            assert idx[0, i, h, :len(r["sel"])].tolist() == r["sel"], where
            if not r["dead"]:
                np.testing.assert_allclose(gate[0, i, h, :len(r["sel"])].numpy(), r["gates"],
                                           rtol=0, atol=1e-13, err_msg=str(where))


@pytest.mark.parametrize("kind", ["normal", "slope", "ties"])
def test_tau_is_the_threshold(kind):
    """Definition check independent of any piece logic: f(tau) == k and f(t) > k just left of
    tau (the smallest such t); sum of the gates over *all* candidates equals k."""
    gen = torch.Generator().manual_seed(7)
    Sk, k, window = 60, 6, 3
    scores = make_scores(kind, 1, Sk, 1, gen)
    tau, _, _, _ = sparsek_operator_ref(scores, Sk, k, window)
    u = scores[0, :, 0].numpy()
    checked = 0
    for i in range(Sk):
        hi = i - window + 1
        if hi <= k:
            assert tau[0, 0, i] == -INF
            continue
        c, t = u[:hi], tau[0, 0, i].item()
        f = lambda x: np.clip(c - x, 0, 1).sum()  # noqa: E731
        assert abs(f(t) - k) < 1e-12
        assert f(t - 1e-9) > k
        checked += 1
    assert checked > 40


def test_operator_properties():
    """tau non-decreasing once n_p > k; Sel_{p+1} within Sel_p + {newest candidate}; the theta
    membership test reproduces the selection."""
    gen = torch.Generator().manual_seed(3)
    Sk, k, window = 90, 7, 5
    for kind in ("normal", "slope", "ties"):
        scores = make_scores(kind, 1, Sk, 2, gen)
        tau, tv, ti, _ = sparsek_operator_ref(scores, Sk, k, window)
        idx, _ = sparsek_selection_ref(scores, Sk, k, window)
        for h in range(2):
            t = tau[0, h]
            fin = t[torch.isfinite(t)]
            assert (fin[1:] >= fin[:-1] - 1e-12).all()
            u = scores[0, :, h]
            for i in range(Sk):
                hi = i - window + 1
                cand = torch.arange(max(hi, 0))
                inside = (u[cand] > tv[0, h, i]) | ((u[cand] == tv[0, h, i])
                                                    & (cand >= ti[0, h, i]))
                sel = set(idx[0, i, h][idx[0, i, h] >= 0].tolist())
                assert set(cand[inside].tolist()) == sel
                if i + 1 < Sk and hi >= 0:
                    nxt = set(idx[0, i + 1, h][idx[0, i + 1, h] >= 0].tolist())
                    assert nxt <= sel | {hi}


def test_operator_float32_and_half_scores():
    gen = torch.Generator().manual_seed(11)
    s64 = make_scores("normal", 2, 50, 2, gen)
    t64, v64, i64, n64 = sparsek_operator_ref(s64, 50, 5, 3)
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        s = s64.to(dt)
        t, v, i, n = sparsek_operator_ref(s, 50, 5, 3)
        assert t.dtype == torch.float32 and v.dtype == torch.float32
        # Computed in float64 from the rounded scores, then rounded once.
        tr, vr, ir, nr = sparsek_operator_ref(s.to(F64), 50, 5, 3)
        assert same(t, tr.to(torch.float32)) and same(v, vr.to(torch.float32))
        assert torch.equal(i, ir) and torch.equal(n, nr)
    assert torch.equal(i64, sparsek_operator_ref(s64, 50, 5, 3, chunk_q=7)[2])


def test_nonfinite_scores():
    gen = torch.Generator().manual_seed(5)
    Sk, k, window = 30, 4, 3
    for bad in (math.nan, INF, -INF):
        scores = make_scores("normal", 1, Sk, 1, gen)
        scores[0, 6, 0] = bad
        tau, tv, ti, na = sparsek_operator_ref(scores, Sk, k, window)
        idx, gate = sparsek_selection_ref(scores, Sk, k, window)
        for i in range(Sk):
            n_p = max(i - window + 1, 0)
            if n_p <= k:  # scores unused: all candidates kept (a non-finite one included)
                assert tau[0, 0, i] == -INF and ti[0, 0, i] == -1
                assert (gate[0, i, 0, :n_p] == 1).all()
            elif n_p > 6:  # the bad key is a candidate
                assert math.isnan(tau[0, 0, i]) and math.isnan(tv[0, 0, i])
                assert ti[0, 0, i] == -1 and na[0, 0, i] == 0
                assert (idx[0, i, 0] == -1).all() and torch.isnan(gate[0, i, 0]).all()
            else:
                assert torch.isfinite(tau[0, 0, i])
        q = torch.randn(1, Sk, 2, 8, dtype=F64, generator=gen)
        kk = torch.randn(1, Sk, 1, 8, dtype=F64, generator=gen)
        v = torch.randn(1, Sk, 1, 8, dtype=F64, generator=gen)
        out, lse = sparsek_attention_ref(q, kk, v, scores, k, window)
        bo, bl = brute_sparsek_attention(q, kk, v, scores, k, window, 8**-0.5)
        assert_close_nan(out.numpy(), bo, 1e-12, 1e-12)
        assert_close_nan(lse.numpy(), bl, 1e-12, 1e-12)
        # dead from n_p = i - window + 1 >= 7 on
        assert torch.isnan(out[0, 6 + window:]).all() and torch.isfinite(out[0, :6 + window]).all()


# ------------------------------------------------------------------------------------------
# attention vs brute force
# ------------------------------------------------------------------------------------------

# (kind, B, Sk, Sq, H, Hkv, D, k, window)
ATT_CASES = [
    ("normal", 1, 1, 1, 1, 1, 4, 1, 0),
    ("normal", 1, 1, 1, 2, 2, 4, 0, 1),
    ("normal", 2, 17, 17, 4, 1, 8, 3, 4),
    ("normal", 1, 17, 9, 8, 1, 8, 2, 0),
    ("normal", 1, 23, 23, 8, 2, 4, 0, 5),
    ("normal", 1, 23, 4, 4, 4, 4, 30, 3),   # k > S
    ("normal", 1, 23, 23, 4, 2, 4, 3, 40),  # window > S
    ("ties", 1, 30, 30, 4, 2, 8, 4, 3),
    ("slope", 1, 113, 113, 8, 1, 8, 9, 7),
    ("gap", 1, 40, 31, 2, 1, 8, 3, 2),
]


def att_id(c):
    return "{}-B{}-Sk{}-Sq{}-H{}-Hkv{}-D{}-k{}-w{}".format(*c)


@pytest.mark.parametrize("case", ATT_CASES, ids=att_id)
def test_sparsek_attention_bruteforce(case):
    kind, B, Sk, Sq, H, Hkv, D, k, window = case
    gen = torch.Generator().manual_seed(seed_of(case))
    q = torch.randn(B, Sq, H, D, dtype=F64, generator=gen)
    kk = torch.randn(B, Sk, Hkv, D, dtype=F64, generator=gen)
    v = torch.randn(B, Sk, Hkv, D, dtype=F64, generator=gen)
    scores = make_scores(kind, B, Sk, Hkv, gen)
    out, lse = sparsek_attention_ref(q, kk, v, scores, k, window, scale=0.3)
    bo, bl = brute_sparsek_attention(q, kk, v, scores, k, window, 0.3)
    assert out.dtype == F64 and lse.dtype == F64 and lse.shape == (B, H, Sq)
    np.testing.assert_allclose(out.numpy(), bo, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse.numpy(), bl, rtol=1e-12, atol=1e-12)
    out2, lse2 = sparsek_attention_ref(q, kk, v, scores, k, window, scale=0.3, chunk_q=3)
    torch.testing.assert_close(out2, out, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(lse2, lse, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (2, 9, 9, 4, 1), (1, 5, 13, 8, 2),
                                   (1, 13, 5, 4, 4), (1, 113, 113, 8, 8)],
                         ids=lambda s: "B{}-Sq{}-Sk{}-H{}-Hkv{}".format(*s))
def test_attention_bruteforce(shape, causal):
    B, Sq, Sk, H, Hkv = shape
    gen = torch.Generator().manual_seed(1 + Sq * Sk)
    q = torch.randn(B, Sq, H, 8, dtype=F64, generator=gen)
    k = torch.randn(B, Sk, Hkv, 8, dtype=F64, generator=gen)
    v = torch.randn(B, Sk, Hkv, 6, dtype=F64, generator=gen)
    out, lse = attention_ref(q, k, v, causal)
    bo, bl = brute_attention(q, k, v, causal, 8**-0.5)
    np.testing.assert_allclose(out.numpy(), bo, rtol=1e-12, atol=1e-12)
    assert_close_nan(lse.numpy(), bl, 1e-12, 1e-12)  # -inf on rows without keys (Sq > Sk)
    out2, lse2 = attention_ref(q, k, v, causal, chunk_q=4)
    assert same(out2, out) or torch.allclose(out2, out, rtol=1e-13, atol=1e-13)
    assert_close_nan(lse2.numpy(), lse.numpy(), 1e-13, 1e-13)


def test_attention_empty_rows_and_keys():
    q = torch.randn(1, 4, 2, 8, dtype=F64, requires_grad=True)
    k = torch.randn(1, 0, 1, 8, dtype=F64)
    out, lse = attention_ref(q, k, k, causal=False)
    assert (out == 0).all() and torch.isneginf(lse).all()
    k = torch.randn(1, 2, 1, 8, dtype=F64, requires_grad=True)
    out, lse = attention_ref(q, k, k, causal=True)  # rows 0, 1 see no key
    assert (out[0, :2] == 0).all() and torch.isneginf(lse[..., :2]).all()
    (out.sum() + lse[..., 2:].sum()).backward()
    assert torch.isfinite(q.grad).all() and (q.grad[0, :2] == 0).all()
    assert torch.isfinite(k.grad).all()


# ------------------------------------------------------------------------------------------
# properties, dtypes, strides
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [0, 1, 6, 100])
def test_k_geq_s_equals_dense_causal(window):
    gen = torch.Generator().manual_seed(window)
    B, Sk, Sq, H, Hkv, D = 2, 37, 29, 4, 2, 16
    q = torch.randn(B, Sq, H, D, dtype=F64, generator=gen)
    k = torch.randn(B, Sk, Hkv, D, dtype=F64, generator=gen)
    v = torch.randn(B, Sk, Hkv, D, dtype=F64, generator=gen)
    scores = make_scores("normal", B, Sk, Hkv, gen)
    ref_o, ref_l = attention_ref(q, k, v, causal=True)
    for ksel in (Sk, Sk + 5):
        o, l = sparsek_attention_ref(q, k, v, scores, ksel, window)
        torch.testing.assert_close(o, ref_o, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(l, ref_l, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs(dtype):
    gen = torch.Generator().manual_seed(2)
    B, S, H, Hkv, D, ksel, window = 1, 64, 4, 2, 32, 8, 8
    q, k, v = (torch.randn(B, S, h, D, generator=gen).to(dtype) for h in (H, Hkv, Hkv))
    scores = torch.randn(B, S, Hkv, generator=gen)
    o, l = sparsek_attention_ref(q, k, v, scores, ksel, window)
    assert o.dtype == dtype and l.dtype == torch.float32
    ro, rl = sparsek_attention_ref(q.double(), k.double(), v.double(), scores.double(), ksel,
                                   window)
    # FlashAttention's rule against a same-dtype reference: error of the float32-accumulated
    # result <= 2x the rounding of the output dtype plus a small epsilon.
    err = (o.double() - ro).abs().max().item()
    assert err <= 2 * (ro.to(dtype).double() - ro).abs().max().item() + 1e-5
    assert (l.double() - rl).abs().max().item() < 1e-5
    o, l = attention_ref(q, k, v, causal=True)
    ro, rl = attention_ref(q.double(), k.double(), v.double(), causal=True)
    assert o.dtype == dtype and l.dtype == torch.float32
    assert (o.double() - ro).abs().max().item() <= 2 * (ro.to(dtype).double() - ro).abs().max(
    ).item() + 1e-5


def test_arbitrary_strides():
    """BHSD storage viewed as BSHD (and a strided scores view) gives identical results."""
    gen = torch.Generator().manual_seed(4)
    B, S, H, Hkv, D, ksel, window = 2, 21, 4, 2, 8, 3, 4
    q = torch.randn(B, H, S, D, dtype=F64, generator=gen).transpose(1, 2)
    k = torch.randn(B, Hkv, S, D, dtype=F64, generator=gen).transpose(1, 2)
    v = torch.randn(B, Hkv, S, D, dtype=F64, generator=gen).transpose(1, 2)
    scores = torch.randn(B, Hkv, S, dtype=F64, generator=gen).transpose(1, 2)
    assert not q.is_contiguous() and not scores.is_contiguous()
    qc, kc, vc, sc = (t.contiguous() for t in (q, k, v, scores))
    for a, b in zip(sparsek_attention_ref(q, k, v, scores, ksel, window),
                    sparsek_attention_ref(qc, kc, vc, sc, ksel, window)):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
    for a, b in zip(attention_ref(q, k, v, True), attention_ref(qc, kc, vc, True)):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
    for a, b in zip(sparsek_operator_ref(scores, S, ksel, window),
                    sparsek_operator_ref(sc, S, ksel, window)):
        assert torch.equal(a, b)
    dout = torch.randn(B, H, S, D, dtype=F64, generator=gen).transpose(1, 2)
    o, l = sparsek_attention_ref(qc, kc, vc, sc, ksel, window)
    g1 = sparsek_attention_bwd_ref(q, k, v, scores, o, l, dout, None, ksel, window)
    g2 = sparsek_attention_bwd_ref(qc, kc, vc, sc, o, l, dout.contiguous(), None, ksel, window)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_argument_errors():
    q = torch.randn(1, 8, 4, 8)
    k = torch.randn(1, 8, 2, 8)
    s = torch.randn(1, 8, 2)
    with pytest.raises(ValueError, match="k_select"):
        sparsek_attention_ref(q, k, k, s, -1, 2)
    with pytest.raises(ValueError, match="both be 0"):
        sparsek_attention_ref(q, k, k, s, 0, 0)
    with pytest.raises(ValueError, match="window"):
        sparsek_operator_ref(s, 8, 2, -3)
    with pytest.raises(ValueError, match="scores"):
        sparsek_attention_ref(q, k, k, s[:, :5], 2, 2)
    with pytest.raises(ValueError, match="seqlen_q"):
        sparsek_selection_ref(s, 9, 2, 2)
    with pytest.raises(ValueError, match="kv heads"):
        attention_ref(q, torch.randn(1, 8, 3, 8), torch.randn(1, 8, 3, 8))
    with pytest.raises(TypeError, match="dtype"):
        attention_ref(q, k.double(), k)
    with pytest.raises(ValueError, match="chunk_q"):
        attention_ref(q, k, k, chunk_q=0)
    with pytest.raises(ValueError, match="scale"):
        sparsek_attention_ref(q, k, k, s, 2, 2, scale=math.nan)


def test_empty_shapes():
    q = torch.randn(2, 0, 4, 8)
    k = torch.randn(2, 5, 2, 8)
    s = torch.randn(2, 5, 2)
    out, lse = sparsek_attention_ref(q, k, k, s, 2, 2)
    assert out.shape == (2, 0, 4, 8) and lse.shape == (2, 4, 0)
    tau, tv, ti, na = sparsek_operator_ref(s, 0, 2, 2)
    assert tau.shape == ti.shape == (2, 2, 0)
    idx, gate = sparsek_selection_ref(s, 0, 3, 1)
    assert idx.shape == gate.shape == (2, 0, 2, 3)
    out, lse = attention_ref(q, k, k, causal=True)
    assert out.shape == (2, 0, 4, 8) and lse.shape == (2, 4, 0)


def test_chunk_default_is_bounded():
    from blackwell_sparsek import reference as r

    # The automatic chunk keeps the per-chunk temporaries under the budget for long sequences.
    S, N = 1 << 16, 8
    c = r._pick_chunk(S, lambda c: 4 * N * c * (S + 1), None)
    assert 1 <= c < S and 4 * N * c * (S + 1) <= r._CHUNK_ELEMS
    assert r._pick_chunk(10, lambda c: 1, None) == 10


# ------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------


def separated_scores(B, Sk, Hkv, Sq, ksel, window, seed, margin=1e-3):
    """Scores whose active sets, selections and kinks are stable under a 1e-6 perturbation,
    with at least one active selected key."""
    for attempt in range(200):
        gen = torch.Generator().manual_seed(seed * 1000 + attempt)
        u = torch.randn(B, Sk, Hkv, dtype=F64, generator=gen) * 0.7
        tau = sparsek_operator_ref(u, Sq, ksel, window)[0]
        ok, n_act = True, 0
        for b, h, i in itertools.product(range(B), range(Hkv), range(Sq)):
            t = tau[b, h, i].item()
            if not math.isfinite(t):
                continue
            hi = Sk - Sq + i - window + 1 if window > 0 else Sk - Sq + i + 1
            c = u[b, :hi, h]
            srt = c.sort(descending=True).values
            gaps = torch.cat([(c - t).abs(), (c - t - 1).abs(), (srt[:-1] - srt[1:])])
            if gaps.min() < margin:
                ok = False
                break
            n_act += int(((c > t) & (c < t + 1)).sum())
        if ok and n_act > 0:
            return u
    raise RuntimeError("no well-separated scores found")


def test_gradcheck_selection_gates():
    B, Sk, Hkv, Sq, ksel, window = 1, 9, 2, 7, 3, 1
    u = separated_scores(B, Sk, Hkv, Sq, ksel, window, seed=1).requires_grad_()
    idx0, _ = sparsek_selection_ref(u, Sq, ksel, window)

    def gates(x):
        idx, g = sparsek_selection_ref(x, Sq, ksel, window)
        assert torch.equal(idx, idx0)
        return g

    assert torch.autograd.gradcheck(gates, (u,), eps=1e-6, atol=1e-7, rtol=1e-6)
    g = torch.autograd.grad(gates(u).sum(), u)[0]
    assert g.abs().sum() > 0  # the operator's gradient is exercised


@pytest.mark.parametrize("cfg", [(1, 8, 8, 2, 1, 3, 2, 2), (1, 9, 6, 4, 2, 2, 0, 2),
                                 (2, 6, 6, 2, 2, 3, 1, 3)],
                         ids=lambda c: "B{}-Sk{}-Sq{}-H{}-Hkv{}-D{}-w{}-k{}".format(*c))
def test_gradcheck_sparsek_attention(cfg):
    B, Sk, Sq, H, Hkv, D, window, ksel = cfg
    gen = torch.Generator().manual_seed(sum(cfg))
    u = separated_scores(B, Sk, Hkv, Sq, ksel, window, seed=sum(cfg)).requires_grad_()
    q = torch.randn(B, Sq, H, D, dtype=F64, generator=gen, requires_grad=True)
    k = torch.randn(B, Sk, Hkv, D, dtype=F64, generator=gen, requires_grad=True)
    v = torch.randn(B, Sk, Hkv, D, dtype=F64, generator=gen, requires_grad=True)

    def f(q, k, v, u):
        return sparsek_attention_ref(q, k, v, u, ksel, window, chunk_q=3)

    assert torch.autograd.gradcheck(f, (q, k, v, u), eps=1e-6, atol=1e-7, rtol=1e-6)
    assert torch.autograd.grad(f(q, k, v, u)[0].square().sum(), u)[0].abs().sum() > 0


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_attention(causal):
    gen = torch.Generator().manual_seed(9)
    q = torch.randn(1, 5, 4, 3, dtype=F64, generator=gen, requires_grad=True)
    k = torch.randn(1, 7, 2, 3, dtype=F64, generator=gen, requires_grad=True)
    v = torch.randn(1, 7, 2, 2, dtype=F64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: attention_ref(*a, causal, chunk_q=2),
                                    (q, k, v), eps=1e-6, atol=1e-7, rtol=1e-6)


def _autograd_grads(fwd, inputs, dout, dlse):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out, lse = fwd(*inputs)
    loss = (out * dout).sum()
    if dlse is not None:
        loss = loss + (torch.nan_to_num(lse, nan=0.0) * dlse).sum()
    # allow_unused: with k_select == 0 the scores take no part in the output.
    return out.detach(), lse.detach(), torch.autograd.grad(loss, inputs, allow_unused=True,
                                                           materialize_grads=True)


BWD_CASES = [  # (kind, B, Sk, Sq, H, Hkv, D, k, window)
    ("normal", 1, 37, 37, 4, 1, 8, 5, 4),
    ("normal", 2, 23, 11, 8, 2, 8, 3, 0),
    ("normal", 1, 23, 23, 4, 4, 8, 0, 6),
    ("normal", 1, 20, 20, 2, 1, 4, 30, 3),
    ("slope", 1, 41, 41, 4, 2, 8, 6, 5),
    ("ties", 1, 30, 30, 2, 1, 4, 4, 2),
]


@pytest.mark.parametrize("with_dlse", [False, True])
@pytest.mark.parametrize("case", BWD_CASES, ids=att_id)
def test_sparsek_bwd_matches_autograd(case, with_dlse):
    kind, B, Sk, Sq, H, Hkv, D, ksel, window = case
    gen = torch.Generator().manual_seed(seed_of(case))
    q = torch.randn(B, Sq, H, D, dtype=F64, generator=gen)
    k = torch.randn(B, Sk, Hkv, D, dtype=F64, generator=gen)
    v = torch.randn(B, Sk, Hkv, D, dtype=F64, generator=gen)
    u = make_scores(kind, B, Sk, Hkv, gen)
    dout = torch.randn(B, Sq, H, D, dtype=F64, generator=gen)
    dlse = torch.randn(B, H, Sq, dtype=F64, generator=gen) if with_dlse else None
    out, lse, ref = _autograd_grads(
        lambda *a: sparsek_attention_ref(*a, ksel, window, scale=0.4), (q, k, v, u), dout, dlse)
    got = sparsek_attention_bwd_ref(q, k, v, u, out, lse, dout, dlse, ksel, window, scale=0.4,
                                    chunk_q=5)
    for name, a, b in zip(("dq", "dk", "dv", "dscores"), got, ref):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11, msg=name)
    if ksel > 0 and ksel < Sk and kind != "ties":
        assert got[3].abs().sum() > 0


def test_sparsek_bwd_dead_rows_match_autograd():
    gen = torch.Generator().manual_seed(21)
    B, S, H, Hkv, D, ksel, window = 1, 20, 2, 1, 4, 3, 2
    q, k, v = (torch.randn(B, S, h, D, dtype=F64, generator=gen) for h in (H, Hkv, Hkv))
    u = make_scores("normal", B, S, Hkv, gen)
    u[0, 9, 0] = math.nan
    dout = torch.randn(B, S, H, D, dtype=F64, generator=gen)
    dlse = torch.randn(B, H, S, dtype=F64, generator=gen)
    out, lse, ref = _autograd_grads(lambda *a: sparsek_attention_ref(*a, ksel, window),
                                    (q, k, v, u), dout, dlse)
    assert torch.isnan(out).any()
    got = sparsek_attention_bwd_ref(q, k, v, u, out, lse, dout, dlse, ksel, window)
    for a, b in zip(got, ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("with_dlse", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(1, 9, 9, 4, 1), (2, 5, 13, 4, 2), (1, 13, 5, 8, 8)],
                         ids=lambda s: "B{}-Sq{}-Sk{}-H{}-Hkv{}".format(*s))
def test_attention_bwd_matches_autograd(shape, causal, with_dlse):
    B, Sq, Sk, H, Hkv = shape
    gen = torch.Generator().manual_seed(Sq * 100 + Sk)
    q = torch.randn(B, Sq, H, 8, dtype=F64, generator=gen)
    k = torch.randn(B, Sk, Hkv, 8, dtype=F64, generator=gen)
    v = torch.randn(B, Sk, Hkv, 8, dtype=F64, generator=gen)
    dout = torch.randn(B, Sq, H, 8, dtype=F64, generator=gen)
    dlse = torch.randn(B, H, Sq, dtype=F64, generator=gen) if with_dlse else None
    out, lse, ref = _autograd_grads(lambda *a: attention_ref(*a, causal), (q, k, v), dout,
                                    None if dlse is None else torch.where(
                                        torch.isneginf(attention_ref(q, k, v, causal)[1]),
                                        0.0, dlse))
    got = attention_bwd_ref(q, k, v, out, lse, dout, dlse, causal, chunk_q=4)
    for a, b in zip(got, ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


def test_bwd_low_precision_dtypes():
    gen = torch.Generator().manual_seed(8)
    B, S, H, Hkv, D = 1, 24, 4, 2, 16
    q, k, v = (torch.randn(B, S, h, D, generator=gen).half() for h in (H, Hkv, Hkv))
    u = torch.randn(B, S, Hkv, generator=gen)
    dout = torch.randn(B, S, H, D, generator=gen).half()
    o, l = sparsek_attention_ref(q, k, v, u, 4, 4)
    g = sparsek_attention_bwd_ref(q, k, v, u, o, l, dout, None, 4, 4)
    assert [t.dtype for t in g] == [torch.float16] * 3 + [torch.float32]
    o64, l64, ref = _autograd_grads(lambda *a: sparsek_attention_ref(*a, 4, 4),
                                    (q.double(), k.double(), v.double(), u.double()),
                                    dout.double(), None)
    for a, b in zip(g, ref):
        assert (a.double() - b).abs().max() < 2e-2 * max(1.0, b.abs().max().item())


# ------------------------------------------------------------------------------------------
# against the C++ reference through the binding (skipped until it is built)
# ------------------------------------------------------------------------------------------


def _load_c():
    try:
        from blackwell_sparsek import _C  # noqa: F401
    except Exception as e:  # not built yet, or an import error in the package
        pytest.skip(f"blackwell_sparsek._C not importable: {e}")
    return _C


BIND_CASES = [  # (kind, B, Sk, Hkv, Sq, k, window)
    ("normal", 2, 50, 2, 50, 5, 4),
    ("normal", 1, 113, 1, 60, 9, 0),
    ("normal", 1, 17, 1, 17, 0, 3),
    ("normal", 1, 17, 2, 9, 40, 2),
    ("slope", 1, 64, 2, 64, 8, 8),
    ("ties", 1, 40, 2, 40, 4, 3),
    ("gap", 1, 30, 1, 30, 3, 1),
]


@pytest.mark.parametrize("case", BIND_CASES, ids=case_id)
def test_binding_operator_and_selection(case):
    C = _load_c()
    kind, B, Sk, Hkv, Sq, ksel, window = case
    gen = torch.Generator().manual_seed(seed_of(case))
    s64 = make_scores(kind, B, Sk, Hkv, gen)
    s32 = s64.float()
    tau = torch.full((B, Hkv, Sq), 7.0)
    tv = torch.full((B, Hkv, Sq), 7.0)
    ti = torch.full((B, Hkv, Sq), 7, dtype=torch.int32)
    na = torch.full((B, Hkv, Sq), 7, dtype=torch.int32)
    C.sparsek_select(s32, Sq, ksel, window, tau, tv, ti, na, 0)
    rt, rv, ri, rn = sparsek_operator_ref(s32, Sq, ksel, window)
    assert_close_nan(tau.numpy(), rt.numpy(), 1e-6, 1e-6)
    assert same(tv, rv)
    assert torch.equal(ti, ri)
    assert torch.equal(na, rn)
    idx = torch.full((B, Sq, Hkv, ksel), 7, dtype=torch.int64)
    gate = torch.full((B, Sq, Hkv, ksel), 7.0, dtype=F64)
    C.sparsek_selection_ref(s64.contiguous(), Sq, ksel, window, idx, gate)
    ridx, rgate = sparsek_selection_ref(s64, Sq, ksel, window)
    assert torch.equal(idx, ridx)
    assert_close_nan(gate.numpy(), rgate.detach().numpy(), 1e-12, 1e-12)


@pytest.mark.parametrize("case", [("normal", 1, 40, 40, 4, 2, 16, 5, 4),
                                  ("slope", 2, 33, 20, 4, 1, 8, 3, 0),
                                  ("normal", 1, 19, 19, 2, 2, 8, 30, 2)],
                         ids=att_id)
def test_binding_sparsek_attention(case):
    C = _load_c()
    kind, B, Sk, Sq, H, Hkv, D, ksel, window = case
    gen = torch.Generator().manual_seed(seed_of(case))
    q = torch.randn(B, Sq, H, D, dtype=F64, generator=gen)
    k = torch.randn(B, Sk, Hkv, D, dtype=F64, generator=gen)
    v = torch.randn(B, Sk, Hkv, D, dtype=F64, generator=gen)
    u = make_scores(kind, B, Sk, Hkv, gen, dtype=torch.float32)
    dout = torch.randn(B, Sq, H, D, dtype=F64, generator=gen)
    dlse = torch.randn(B, H, Sq, dtype=torch.float32, generator=gen)
    scale = 0.25
    out = torch.full_like(q, 7.0)
    lse = torch.full((B, H, Sq), 7.0)
    C.sparsek_attention_fwd(q, k, v, u, out, lse, ksel, window, scale, 0)
    ro, rl = sparsek_attention_ref(q, k, v, u, ksel, window, scale)
    torch.testing.assert_close(out, ro, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, rl.float(), rtol=1e-6, atol=1e-6)
    grads = [torch.full_like(t, 7.0) for t in (q, k, v, u)]
    C.sparsek_attention_bwd(q, k, v, u, ro, dout, rl.float(), dlse, *grads, ksel, window, scale,
                            0)
    ref = sparsek_attention_bwd_ref(q, k, v, u, ro, rl, dout, dlse, ksel, window, scale)
    for name, a, b in zip(("dq", "dk", "dv", "dscores"), grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("causal", [False, True])
def test_binding_attention(causal):
    C = _load_c()
    gen = torch.Generator().manual_seed(31)
    B, Sq, Sk, H, Hkv, D = 1, 13, 21, 4, 2, 16
    q = torch.randn(B, Sq, H, D, dtype=F64, generator=gen)
    k = torch.randn(B, Sk, Hkv, D, dtype=F64, generator=gen)
    v = torch.randn(B, Sk, Hkv, D, dtype=F64, generator=gen)
    dout = torch.randn(B, Sq, H, D, dtype=F64, generator=gen)
    dlse = torch.randn(B, H, Sq, generator=gen)
    out = torch.full_like(q, 7.0)
    lse = torch.full((B, H, Sq), 7.0)
    C.attention_fwd(q, k, v, out, lse, causal, 0.25, 0)
    ro, rl = attention_ref(q, k, v, causal, 0.25)
    torch.testing.assert_close(out, ro, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, rl.float(), rtol=1e-6, atol=1e-6)
    grads = [torch.full_like(t, 7.0) for t in (q, k, v)]
    C.attention_bwd(q, k, v, ro, dout, rl.float(), dlse, *grads, causal, 0.25, 0)
    for a, b in zip(grads, attention_bwd_ref(q, k, v, ro, rl, dout, dlse, causal, 0.25)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

"""GPU tests of the sm_90a kernels through the binding, against exact references. Each test
uses fresh random data and poisons the outputs before the launch. Skipped without a Hopper GPU
and the built extension."""
import math

import pytest
import torch

from gpu_utils import _C, assert_fa_rule, default_scale, dense_ref, poison, requires_hopper, stream

pytestmark = requires_hopper

DTYPES = [torch.float16, torch.bfloat16]
EPS = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def rand(*shape, dtype, gen):
    return torch.randn(*shape, generator=gen, device="cuda", dtype=torch.float32).to(dtype)


def run_dense(q, k, v, causal, scale=None):
    B, Sq, H, D = q.shape
    out = poison(torch.empty_like(q))
    lse = poison(torch.empty(B, H, Sq, device="cuda", dtype=torch.float32))
    _C.attention_fwd(q, k, v, out, lse, causal, scale, stream())
    torch.cuda.synchronize()
    return out, lse


DENSE_SHAPES = [
    # B, Sq, Sk, H, Hkv, D
    (1, 1, 1, 2, 2, 64),
    (2, 113, 113, 4, 1, 128),
    (1, 1000, 1000, 8, 2, 64),
    (1, 4097, 4097, 2, 2, 128),
    (2, 77, 300, 8, 8, 128),    # Sq < Sk (decode-like chunk)
    (1, 300, 129, 4, 4, 64),    # Sq > Sk: causal rows before the first key are empty
    (1, 256, 256, 8, 1, 128),   # MQA, round sizes
    # D = 64 KV tiles (launch_impl.h): Sk 1 and 1000 above take 128 keys; 129 and 1537 take
    # 192 non-causal and 128 causal; 4097 takes 192 (BSK_DENSE_D64_BLOCKN forces one for all).
    (1, 4097, 4097, 2, 1, 64),  # many full tiles and a ragged one
    (2, 77, 1537, 4, 2, 64),    # Sq < Sk = 8 * 192 + 1
]


@pytest.mark.parametrize("shape", DENSE_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_dense_vs_reference(shape, dtype, causal):
    check_dense(shape, dtype, causal, hash((shape, str(dtype), causal)) % 2**31)


def check_dense_launch(q, k, v, causal):
    """One dense launch against the float64 reference (FA rule, LSE)."""
    dtype, D = q.dtype, q.shape[-1]
    out, lse = run_dense(q, k, v, causal)
    scale = default_scale(D)
    ref, ref_lse = dense_ref(q, k, v, causal, scale)
    low, _ = dense_ref(q, k, v, causal, scale, dtype=dtype)
    assert_fa_rule(out, ref, low, "out", EPS[dtype])
    fin = torch.isfinite(ref_lse)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse)), "-inf LSE placement differs"
    assert torch.allclose(lse[fin].double(), ref_lse[fin], atol=1e-3, rtol=1e-4)


def check_dense(shape, dtype, causal, seed):
    """One dense launch on fresh data against the float64 reference (FA rule, LSE)."""
    B, Sq, Sk, H, Hkv, D = shape
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = rand(B, Sq, H, D, dtype=dtype, gen=gen), rand(B, Sk, Hkv, D, dtype=dtype, gen=gen), \
        rand(B, Sk, Hkv, D, dtype=dtype, gen=gen)
    check_dense_launch(q, k, v, causal)


@pytest.mark.parametrize("shape", [(1, 1000, 1000, 2, 2, 128), (2, 300, 1500, 4, 1, 64)])
@pytest.mark.parametrize("growing", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_dense_logits_drifting_along_keys(shape, growing, causal):
    """Key norms that grow (or shrink) along the sequence: a row's max moves by far more than
    the softmax's stale-max allowance (2^8) over some tiles and by less over others, so both the
    skipped and the taken O rescales are exercised, with large in-tile probability ratios."""
    B, Sq, Sk, H, Hkv, D = shape
    dtype = torch.bfloat16
    gen = torch.Generator(device="cuda").manual_seed(hash((shape, growing, causal)) % 2**31)
    q = rand(B, Sq, H, D, dtype=dtype, gen=gen)
    j = torch.arange(Sk, device="cuda", dtype=torch.float32)
    gain = 1 + (j if growing else Sk - 1 - j) / 96
    k = (rand(B, Sk, Hkv, D, dtype=torch.float32, gen=gen) * gain[None, :, None, None]).to(dtype)
    v = rand(B, Sk, Hkv, D, dtype=dtype, gen=gen)
    check_dense_launch(q, k, v, causal)


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("Sk", [1537, 4097])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_dense_one_dominant_key_at_each_column(D, Sk, dtype, causal):
    """Batch b has one key whose logit exceeds every other by over 20 (a peaked row, as at an
    attention sink), at key 8 b + b % 8 for b < 24: a different 8-column group of the first KV
    tiles in each batch (every group of a 192-key tile, of two 128-key tiles). The softmax's row
    max must see every column: a reduction that misses the dominant key's group leaves
    probabilities above 2^31, which overflow float16's P (the 192-key kernel's tree once did)."""
    B, Sq, H, Hkv = 24, 64, 2, 1
    gen = torch.Generator(device="cuda").manual_seed(hash((D, Sk, str(dtype), causal)) % 2**31)
    q = 0.3 * rand(B, Sq, H, D, dtype=torch.float32, gen=gen)
    q[..., 0] += 4.0  # every query shares direction e0
    k = 0.5 * rand(B, Sk, Hkv, D, dtype=torch.float32, gen=gen)
    b = torch.arange(B, device="cuda")
    j = 8 * b + b % 8
    k[b, j] = 0.0
    k[b, j, :, 0] = 30.0 * math.sqrt(D) / 4.0  # logit 4 * that * D^-1/2 = 30
    v = rand(B, Sk, Hkv, D, dtype=torch.float32, gen=gen)
    check_dense_launch(q.to(dtype), k.to(dtype), v.to(dtype), causal)


def test_dense_strided_views():
    """BHSD storage viewed as BSHD through transpose(1, 2): no copy, same result."""
    gen = torch.Generator(device="cuda").manual_seed(7)
    B, H, S, D = 2, 4, 200, 128
    qb, kb, vb = (rand(B, H, S, D, dtype=torch.float16, gen=gen) for _ in range(3))
    q, k, v = qb.transpose(1, 2), kb.transpose(1, 2), vb.transpose(1, 2)
    out, _ = run_dense(q, k, v, True)
    out_c, _ = run_dense(q.contiguous(), k.contiguous(), v.contiguous(), True)
    assert torch.equal(out, out_c)


def test_dense_explicit_scale():
    gen = torch.Generator(device="cuda").manual_seed(11)
    q, k, v = (rand(1, 130, 2, 64, dtype=torch.float16, gen=gen) for _ in range(3))
    out, _ = run_dense(q, k, v, False, scale=0.3)
    ref, _ = dense_ref(q, k, v, False, 0.3)
    low, _ = dense_ref(q, k, v, False, 0.3, dtype=torch.float16)
    assert_fa_rule(out, ref, low, "out", EPS[torch.float16])


@pytest.fixture
def few_ctas(monkeypatch):
    """Caps the persistent grid (BSK_ATTN_MAX_CTAS, read at every launch) so that each CTA runs
    many work tiles: the stage, metadata and Q rings and their phases wrap across work tiles,
    and work tiles of different heads, batches and lengths (some with no KV tile) follow each
    other on one CTA."""
    def set_cap(n):
        monkeypatch.setenv("BSK_ATTN_MAX_CTAS", str(n))
    return set_cap


@pytest.mark.parametrize("ctas", [1, 3])
@pytest.mark.parametrize("shape,causal", [
    ((2, 1000, 1000, 4, 2, 128), True),
    ((1, 300, 129, 4, 4, 64), True),     # the first query tile has no key: a work tile of 0 KV tiles
    ((2, 77, 300, 8, 8, 128), False),
])
def test_dense_persistent_many_tiles_per_cta(few_ctas, ctas, shape, causal):
    few_ctas(ctas)
    check_dense(shape, torch.bfloat16, causal, hash((shape, ctas, causal)) % 2**31)


# ------------------------------------------------------------------------------------------
# SparseK
# ------------------------------------------------------------------------------------------

def make_scores(B, Sk, Hkv, kind, gen):
    u = torch.randn(B, Sk, Hkv, generator=gen, device="cuda")
    if kind == "ties":
        u = torch.round(u * 1.5) / 1.5  # a handful of distinct values
    elif kind == "slope":
        u = u * 0.3 + torch.arange(Sk, device="cuda", dtype=torch.float32)[None, :, None] * 0.05
    return u.contiguous()


def sparse_ref(q, k, v, scores, k_select, window, scale):
    """Exact C++ reference (CPU, double)."""
    cpu = lambda t: t.detach().cpu().double()
    out = torch.empty(q.shape, dtype=torch.float64)
    lse = torch.empty(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32)
    _C.sparsek_attention_fwd(cpu(q), cpu(k), cpu(v), scores.detach().cpu().float(), out, lse,
                             k_select, window, scale, 0)
    return out.cuda(), lse.cuda()


def sparse_low(q, k, v, scores, k_select, window, scale):
    """Same-precision reference: explicit key set and gates from the exact selection, then
    attention computed in q.dtype (what FlashAttention's rule compares against)."""
    B, Sq, H, D = q.shape
    Sk, Hkv = k.shape[1], k.shape[2]
    kk = max(k_select, 0)
    idx = torch.empty(B, Sq, Hkv, kk, dtype=torch.int64)
    gate = torch.empty(B, Sq, Hkv, kk, dtype=torch.float64)
    _C.sparsek_selection_ref(scores.detach().cpu().double().contiguous(), Sq, k_select, window,
                             idx, gate)
    g = torch.zeros(B, Hkv, Sq, Sk + 1, dtype=torch.float64)
    allowed = torch.zeros(B, Hkv, Sq, Sk + 1, dtype=torch.bool)
    ii = idx.permute(0, 2, 1, 3).clone()
    gg = gate.permute(0, 2, 1, 3).clone()
    ii[ii < 0] = Sk  # padding goes to a dummy column
    g.scatter_(3, ii, gg)
    allowed.scatter_(3, ii, torch.ones_like(ii, dtype=torch.bool))
    g, allowed = g[..., :Sk], allowed[..., :Sk]
    pos = torch.arange(Sq)[:, None] + (Sk - Sq)
    j = torch.arange(Sk)[None, :]
    win = (j <= pos) & (j > pos - window)
    g = torch.where(win, torch.ones_like(g), g)
    allowed = allowed | win
    nan_rows = torch.isnan(g).any(-1, keepdim=True)
    dev = q.device
    rep = H // Hkv
    qf = q.transpose(1, 2)
    kf = k.transpose(1, 2).repeat_interleave(rep, 1)
    vf = v.transpose(1, 2).repeat_interleave(rep, 1)
    s = (qf @ kf.transpose(-1, -2)) * scale
    allowed_h = allowed.repeat_interleave(rep, 1).to(dev)
    s = s.masked_fill(~allowed_h, float("-inf"))
    p = torch.softmax(s.float(), dim=-1).nan_to_num(0.0).to(q.dtype)
    p = p * g.repeat_interleave(rep, 1).nan_to_num(0.0).to(dev).to(q.dtype)
    out = (p @ vf).transpose(1, 2)
    out = out.masked_fill(nan_rows.repeat_interleave(rep, 1).transpose(1, 2).to(dev), float("nan"))
    return out


def run_sparse(q, k, v, scores, k_select, window, scale=None):
    B, Sq, H, D = q.shape
    out = poison(torch.empty_like(q))
    lse = poison(torch.empty(B, H, Sq, device="cuda", dtype=torch.float32))
    _C.sparsek_attention_fwd(q, k, v, scores, out, lse, k_select, window, scale, stream())
    torch.cuda.synchronize()
    return out, lse



def test_sparsek_caller_workspace():
    """A caller-provided workspace (what the PyTorch op passes) gives the same bits as the
    call's own allocation; one byte short is refused, naming the argument, before anything is
    written."""
    gen = torch.Generator(device="cuda").manual_seed(17)
    B, S, H, Hkv, D = 2, 700, 4, 2, 128
    q = rand(B, S, H, D, dtype=torch.float16, gen=gen)
    k, v = (rand(B, S, Hkv, D, dtype=torch.float16, gen=gen) for _ in range(2))
    u = make_scores(B, S, Hkv, "randn", gen)
    ref, ref_lse = run_sparse(q, k, v, u, 64, 32)
    nbytes = _C.sparsek_attention_fwd_workspace_size(q, k, v, u, 64, 32)
    assert nbytes > 0
    ws = torch.full((nbytes,), 0xAB, device="cuda", dtype=torch.uint8)  # garbage scratch
    out = poison(torch.empty_like(q))
    lse = poison(torch.empty(B, H, S, device="cuda", dtype=torch.float32))
    _C.sparsek_attention_fwd(q, k, v, u, out, lse, 64, 32, None, stream(), ws)
    torch.cuda.synchronize()
    assert torch.equal(out, ref) and torch.equal(lse, ref_lse)
    out2 = poison(torch.empty_like(q))
    before = out2.clone()
    with pytest.raises(ValueError, match="argument 'workspace'"):
        _C.sparsek_attention_fwd(q, k, v, u, out2, None, 64, 32, None, stream(), ws[:-1])
    torch.cuda.synchronize()
    assert torch.equal(out2.view(torch.int16), before.view(torch.int16))


@pytest.mark.parametrize("S", [17000, 3500])
def test_select_caller_workspace(S):
    """Device scratch of the selection (keys beyond shared memory sort there; 2049..4096 keys
    keep their chunk table there): a caller-provided workspace (what the PyTorch op passes)
    gives the same bits as the call's own allocation; one byte short is refused, naming the
    argument, before anything is written."""
    gen = torch.Generator(device="cuda").manual_seed(23)
    B, Hkv, Sq, k_sel, win = 1, 2, 3000, 256, 64
    u = make_scores(B, S, Hkv, "randn", gen)
    nbytes = _C.sparsek_select_workspace_size(u, Sq, k_sel, win)
    assert nbytes > 0
    assert _C.sparsek_select_workspace_size(u[:, :2048].contiguous(), 2048, k_sel, win) == 0

    def outputs():
        tau = poison(torch.empty(B, Hkv, Sq, device="cuda"))
        theta_idx = torch.full((B, Hkv, Sq), -7, device="cuda", dtype=torch.int32)
        return tau, poison(torch.empty_like(tau)), theta_idx, theta_idx.clone()

    want = outputs()
    _C.sparsek_select(u, Sq, k_sel, win, *want, stream())
    torch.cuda.synchronize()
    # Every output was written (the poison is gone), so the comparison below can fail.
    assert not torch.isnan(want[0]).any() and not torch.isnan(want[1]).any()
    assert bool((want[2] >= -1).all()) and bool((want[3] >= 0).all())
    got = outputs()
    ws = torch.full((nbytes,), 0xAB, device="cuda", dtype=torch.uint8)  # garbage scratch
    _C.sparsek_select(u, Sq, k_sel, win, *got, stream(), ws)
    torch.cuda.synchronize()
    for g, w in zip(got, want):
        assert torch.equal(g.view(torch.int32), w.view(torch.int32))
    # A workspace at any address: the size includes the slack the call needs to round it up.
    odd = torch.full((nbytes + 3,), 0xCD, device="cuda", dtype=torch.uint8)[3:]
    assert odd.data_ptr() % 16 != 0
    got = outputs()
    _C.sparsek_select(u, Sq, k_sel, win, *got, stream(), odd)
    torch.cuda.synchronize()
    for g, w in zip(got, want):
        assert torch.equal(g.view(torch.int32), w.view(torch.int32))
    short = outputs()
    before = [t.clone() for t in short]
    with pytest.raises(ValueError, match="argument 'workspace'"):
        _C.sparsek_select(u, Sq, k_sel, win, *short, stream(), ws[:-1])
    torch.cuda.synchronize()
    for t, b in zip(short, before):
        assert torch.equal(t.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("sparse", [False, True])
def test_output_view_with_padded_rows(sparse):
    """O written into a view whose rows are padded (head stride D + 8, one spare row per batch):
    the epilogue's 16-byte chunks land in the view only, bit for bit as with a contiguous
    output."""
    gen = torch.Generator(device="cuda").manual_seed(11)
    B, S, H, Hkv, D = 2, 300, 4, 2, 64
    q = rand(B, S, H, D, dtype=torch.float16, gen=gen)
    k = rand(B, S, Hkv, D, dtype=torch.float16, gen=gen)
    v = rand(B, S, Hkv, D, dtype=torch.float16, gen=gen)
    u = torch.randn(B, S, Hkv, generator=gen, device="cuda")
    buf = poison(torch.empty(B, S + 1, H, D + 8, dtype=torch.float16, device="cuda"))
    out = buf[:, :S, :, :D]
    lse = poison(torch.empty(B, H, S, device="cuda", dtype=torch.float32))
    if sparse:
        _C.sparsek_attention_fwd(q, k, v, u, out, lse, 64, 32, None, stream())
        want, want_lse = run_sparse(q, k, v, u, 64, 32)
    else:
        _C.attention_fwd(q, k, v, out, lse, True, None, stream())
        want, want_lse = run_dense(q, k, v, True)
    torch.cuda.synchronize()
    assert torch.equal(out, want) and torch.equal(lse, want_lse)
    assert torch.isnan(buf[:, :S, :, D:]).all() and torch.isnan(buf[:, S:]).all(), \
        "the epilogue wrote outside the output view"


SPARSE_CASES = [
    # B, Sq, Sk, H, Hkv, D, k, window, scores
    (1, 1, 1, 2, 2, 64, 1, 0, "randn"),
    (1, 113, 113, 4, 1, 128, 1, 1, "ties"),
    (2, 113, 113, 4, 4, 64, 64, 0, "slope"),
    (1, 1000, 1000, 8, 2, 128, 64, 256, "randn"),
    (1, 1000, 1000, 4, 4, 64, 256, 1, "ties"),
    (1, 4097, 4097, 2, 2, 128, 256, 256, "slope"),
    (1, 4097, 4097, 8, 1, 64, 64, 0, "ties"),
    (1, 300, 300, 2, 2, 128, 0, 256, "randn"),      # window only
    (1, 300, 300, 2, 2, 128, 1000, 0, "randn"),     # k > S: all candidates
    (1, 300, 300, 2, 2, 64, 64, 1000, "randn"),     # window > S
    (2, 200, 777, 8, 2, 128, 256, 256, "randn"),    # Sq < Sk
    (1, 129, 1000, 4, 1, 128, 1, 64, "ties"),
    # Unions of 600+ keys: more gathered tiles per query tile than pipeline stages (and than
    # key-metadata slots), so every ring wraps on gathered tiles; both head dims.
    (1, 2000, 2000, 2, 1, 128, 1024, 64, "randn"),
    (1, 1500, 1500, 4, 2, 64, 700, 0, "ties"),
]


@pytest.mark.parametrize("case", SPARSE_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sparsek_vs_reference(case, dtype):
    check_sparse(case, dtype, hash((case, str(dtype))) % 2**31)


def check_sparse(case, dtype, seed):
    """One SparseK launch (selection + attention) on fresh data against the exact reference."""
    B, Sq, Sk, H, Hkv, D, ks, w, kind = case
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = rand(B, Sq, H, D, dtype=dtype, gen=gen)
    k = rand(B, Sk, Hkv, D, dtype=dtype, gen=gen)
    v = rand(B, Sk, Hkv, D, dtype=dtype, gen=gen)
    u = make_scores(B, Sk, Hkv, kind, gen)
    scale = default_scale(D)
    out, lse = run_sparse(q, k, v, u, ks, w)
    ref, ref_lse = sparse_ref(q, k, v, u, ks, w, scale)
    low = sparse_low(q, k, v, u, ks, w, scale)
    assert_fa_rule(out, ref, low, "out", EPS[dtype])
    fin = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), fin)
    assert torch.allclose(lse[fin], ref_lse[fin], atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("ctas", [1, 3])
@pytest.mark.parametrize("case", [
    (2, 1000, 1000, 4, 2, 128, 256, 64, "slope"),
    (1, 200, 777, 8, 2, 64, 64, 300, "ties"),
    (1, 1500, 1500, 2, 1, 128, 700, 0, "randn"),   # many gathered tiles per work tile
])
def test_sparsek_persistent_many_tiles_per_cta(few_ctas, ctas, case):
    few_ctas(ctas)
    check_sparse(case, torch.float16, hash((case, ctas)) % 2**31)


@pytest.mark.parametrize("sparse", [False, True])
def test_tma_and_cpasync_paths_agree(monkeypatch, sparse):
    """Q and whole contiguous K/V tiles load through TMA unless BSK_ATTN_TMA=0 (read at every
    launch); both paths fill the same shared-memory layout, so the outputs are bit-identical. The
    shapes have partial tiles (cp.async either way) next to whole ones, GQA and a strided view."""
    gen = torch.Generator(device="cuda").manual_seed(23)
    B, Sq, Sk, H, Hkv, D = 2, 333, 1000, 4, 2, 128
    q = rand(B, H, Sq, D, dtype=torch.bfloat16, gen=gen).transpose(1, 2)  # strided BSHD view
    k, v = (rand(B, Sk, Hkv, D, dtype=torch.bfloat16, gen=gen) for _ in range(2))
    u = make_scores(B, Sk, Hkv, "randn", gen)
    outs = []
    for tma in ("1", "0"):
        monkeypatch.setenv("BSK_ATTN_TMA", tma)
        outs.append(run_sparse(q, k, v, u, 64, 128) if sparse else run_dense(q, k, v, True))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    if not sparse:
        ref, _ = dense_ref(q, k, v, True, default_scale(D))
        low, _ = dense_ref(q, k, v, True, default_scale(D), dtype=torch.bfloat16)
        assert_fa_rule(outs[0][0], ref, low, "out", EPS[torch.bfloat16])


def test_sparsek_k_ge_s_equals_dense_causal():
    gen = torch.Generator(device="cuda").manual_seed(3)
    B, S, H, D = 1, 517, 4, 128
    q, k, v = (rand(B, S, H, D, dtype=torch.float16, gen=gen) for _ in range(3))
    u = make_scores(B, S, H, "randn", gen)
    out, lse = run_sparse(q, k, v, u, S, 16)
    dout, dlse = run_dense(q, k, v, True)
    assert (out.float() - dout.float()).abs().max().item() < 2e-3
    assert torch.allclose(lse, dlse, atol=1e-4)


def test_sparsek_nan_scores_give_nan_rows():
    gen = torch.Generator(device="cuda").manual_seed(5)
    B, S, H, D = 1, 300, 2, 64
    q, k, v = (rand(B, S, H, D, dtype=torch.float16, gen=gen) for _ in range(3))
    u = make_scores(B, S, H, "randn", gen)
    u[0, 10, 0] = float("nan")
    out, lse = run_sparse(q, k, v, u, 8, 16)
    ref, ref_lse = sparse_ref(q, k, v, u, 8, 16, default_scale(D))
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    assert torch.isnan(out[0, -1, 0]).all() and not torch.isnan(out[0, -1, 1]).any()


def test_sparsek_nonfinite_scores_in_all_selected_rows():
    """Rows with n_p <= k select every candidate with gate 1, whatever its score: a -inf or NaN
    score there keeps its key at gate 1 (the kernel stores non-finite scores as 0 for the gate,
    and theta = 0 selects every key). Later rows with such a candidate are NaN rows."""
    gen = torch.Generator(device="cuda").manual_seed(13)
    B, S, H, D = 1, 400, 2, 128
    dtype = torch.float16
    q, k, v = (rand(B, S, H, D, dtype=dtype, gen=gen) for _ in range(3))
    u = make_scores(B, S, H, "randn", gen)
    u[0, 5, 0] = float("-inf")
    u[0, 9, 1] = float("nan")
    ks, w, scale = 200, 32, default_scale(D)
    out, lse = run_sparse(q, k, v, u, ks, w)
    ref, ref_lse = sparse_ref(q, k, v, u, ks, w, scale)
    low = sparse_low(q, k, v, u, ks, w, scale)
    nan_ref = torch.isnan(ref)
    assert nan_ref[0, 232:].all() and not nan_ref[0, :232].any()  # L = p - 31 > k from p = 232
    low = torch.where(nan_ref, ref.to(low.dtype), low)  # sparse_low has no NaN rows
    assert_fa_rule(out, ref, low, "out", EPS[dtype])
    fin = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), fin)
    assert torch.allclose(lse[fin], ref_lse[fin], atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("kind", ["randn", "ties", "slope"])
@pytest.mark.parametrize("S,Sq,ks,w", [(1, 1, 1, 0), (113, 113, 1, 1), (1000, 1000, 64, 256),
                                       (4097, 4097, 256, 256), (4097, 1000, 1024, 0),
                                       (500, 500, 0, 10), (300, 300, 1000, 0)])
def test_select_vs_reference(kind, S, Sq, ks, w):
    gen = torch.Generator(device="cuda").manual_seed(hash((kind, S, Sq, ks, w)) % 2**31)
    B, Hkv = 2, 3
    u = make_scores(B, S, Hkv, kind, gen)
    outs = [poison(torch.empty(B, Hkv, Sq, device="cuda")) for _ in range(2)] + \
        [torch.full((B, Hkv, Sq), -7, device="cuda", dtype=torch.int32) for _ in range(2)]
    _C.sparsek_select(u, Sq, ks, w, *outs, stream())
    torch.cuda.synchronize()
    ref = [torch.empty(B, Hkv, Sq) for _ in range(2)] + \
        [torch.empty(B, Hkv, Sq, dtype=torch.int32) for _ in range(2)]
    _C.sparsek_select(u.cpu(), Sq, ks, w, *ref, 0)
    tau, tv, ti, na = (t.cpu() for t in outs)
    assert torch.equal(ti, ref[2]), "theta_idx differs"
    assert torch.equal(na, ref[3]), "n_active differs"
    assert torch.equal(torch.isinf(tau), torch.isinf(ref[0]))
    assert torch.equal(torch.isnan(tau), torch.isnan(ref[0]))
    fin = torch.isfinite(ref[0])
    assert torch.allclose(tau[fin], ref[0][fin], rtol=2e-6, atol=2e-6)
    assert torch.equal(tv.nan_to_num(1e30), ref[1].nan_to_num(1e30))

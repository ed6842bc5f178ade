"""The torch.library ops and the functional API: opcheck, gradients (gradcheck in float64 and
the explicit PyTorch backward against autograd through the reference), strides, dtypes, the
one-time fallback warning; on a Hopper GPU with the built extension, kernel == fallback.

CPU parts need no GPU and no compiled extension; GPU parts skip cleanly without them."""
import math
import warnings

import pytest
import torch

import blackwell_sparsek as bsk
from blackwell_sparsek import _backend
from blackwell_sparsek import reference as ref

OPS = torch.ops.blackwell_sparsek
HAS_CUDA = torch.cuda.is_available()
HOPPER = HAS_CUDA and bsk.kernels_available()
requires_hopper = pytest.mark.skipif(not HOPPER,
                                     reason="needs an sm_90 GPU and the built _C extension")
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")

# The fallback warning is the subject of one test below; elsewhere it is expected noise.
pytestmark = pytest.mark.filterwarnings("ignore::blackwell_sparsek.FallbackWarning")


def gen(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def rand(*shape, g, dtype=torch.float32, device="cpu", requires_grad=False):
    t = torch.randn(*shape, generator=g, device=device, dtype=torch.float32).to(dtype)
    return t.requires_grad_(requires_grad)


def make(B, Sq, Sk, H, Hkv, D, dtype=torch.float32, device="cpu", seed=0, grad=False,
         bhsd=False):
    """Fresh q, k, v, scores; ``bhsd`` gives BHSD storage viewed as BSHD (transpose views)."""
    g = gen(seed, device)
    if bhsd:
        q = rand(B, H, Sq, D, g=g, dtype=dtype, device=device).transpose(1, 2)
        k = rand(B, Hkv, Sk, D, g=g, dtype=dtype, device=device).transpose(1, 2)
        v = rand(B, Hkv, Sk, D, g=g, dtype=dtype, device=device).transpose(1, 2)
    else:
        q = rand(B, Sq, H, D, g=g, dtype=dtype, device=device)
        k = rand(B, Sk, Hkv, D, g=g, dtype=dtype, device=device)
        v = rand(B, Sk, Hkv, D, g=g, dtype=dtype, device=device)
    s = rand(B, Sk, Hkv, g=g, device=device) * 2
    if grad:
        for t in (q, k, v, s):
            t.requires_grad_(True)
    return q, k, v, s


# ------------------------------------------------------------------------------------------------
# opcheck
# ------------------------------------------------------------------------------------------------

OPCHECK_CASES = [
    # B, Sq, Sk, H, Hkv, D, k_select, window, dtype, bhsd
    (2, 7, 7, 4, 2, 8, 2, 3, torch.float32, False),
    (1, 5, 12, 2, 1, 16, 3, 0, torch.float32, True),     # window 0, Sq < Sk, strided views
    (1, 9, 9, 2, 2, 8, 20, 2, torch.bfloat16, False),    # k > Sk: all candidates selected
]


def _opcheck(op, args):
    res = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in res.values()), res


@pytest.mark.parametrize("case", OPCHECK_CASES)
@pytest.mark.parametrize("causal", [False, True])
def test_opcheck_attention(case, causal):
    B, Sq, Sk, H, Hkv, D, _, _, dtype, bhsd = case
    q, k, v, _ = make(B, Sq, Sk, H, Hkv, D, dtype, seed=1, grad=True, bhsd=bhsd)
    _opcheck(OPS.attention_fwd.default, (q, k, v, causal, 0.37))
    with torch.no_grad():
        out, lse = OPS.attention_fwd(q, k, v, causal, 0.37)
    dout = torch.randn_like(out)
    dlse = torch.randn_like(lse)
    qd, kd, vd = q.detach(), k.detach(), v.detach()
    for dl in (dlse, None):
        _opcheck(OPS.attention_bwd.default, (qd, kd, vd, out, lse, dout, dl, causal, 0.37))


@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck_sparsek(case):
    B, Sq, Sk, H, Hkv, D, ks, w, dtype, bhsd = case
    q, k, v, s = make(B, Sq, Sk, H, Hkv, D, dtype, seed=2, grad=True, bhsd=bhsd)
    _opcheck(OPS.sparsek_attention_fwd.default, (q, k, v, s, ks, w, 0.29))
    with torch.no_grad():
        out, lse = OPS.sparsek_attention_fwd(q, k, v, s, ks, w, 0.29)
    dout = torch.randn_like(out)
    args = (q.detach(), k.detach(), v.detach(), s.detach(), out, lse, dout)
    for dl in (torch.randn_like(lse), None):
        _opcheck(OPS.sparsek_attention_bwd.default, (*args, dl, ks, w, 0.29))


@pytest.mark.parametrize("sq,sk,ks,w", [(6, 10, 3, 2), (10, 10, 4, 0), (3, 10, 20, 1)])
def test_opcheck_select(sq, sk, ks, w):
    s = torch.randn(2, sk, 3, dtype=torch.float32, requires_grad=True)
    _opcheck(OPS.sparsek_select.default, (s, sq, ks, w))
    with torch.no_grad():
        tau, tv, ti, na = OPS.sparsek_select(s, sq, ks, w)
    _opcheck(OPS.sparsek_select_bwd.default,
             (s.detach(), tau, ti, na, torch.randn_like(tau), torch.randn_like(tv), sq, w))


@requires_cuda
@pytest.mark.parametrize("D", [64, 128])
def test_opcheck_cuda(D):
    """On a GPU: the kernels when available (else the fallback runs on CUDA tensors)."""
    q, k, v, s = make(1, 70, 130, 4, 2, D, torch.float16, device="cuda", seed=3, grad=True)
    _opcheck(OPS.attention_fwd.default, (q, k, v, True, 1 / math.sqrt(D)))
    _opcheck(OPS.sparsek_attention_fwd.default, (q, k, v, s, 16, 32, 1 / math.sqrt(D)))
    _opcheck(OPS.sparsek_select.default, (s, 70, 16, 32))


# ------------------------------------------------------------------------------------------------
# forward semantics through the public API
# ------------------------------------------------------------------------------------------------


def test_outputs_dtypes_and_strides():
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        q, k, v, s = make(1, 6, 9, 2, 1, 8, dtype, seed=4)
        out, lse = bsk.sparsek_attention(q, k, v, s, 2, 2, return_lse=True)
        assert out.dtype == dtype and lse.dtype == torch.float32
        assert out.shape == q.shape and lse.shape == (1, 2, 6)
        assert out.is_contiguous() and lse.is_contiguous()
        out2, lse2 = bsk.attention(q, k, v, return_lse=True)
        assert out2.dtype == dtype and lse2.dtype == torch.float32 and lse2.shape == (1, 2, 6)
    q, k, v, s = make(1, 6, 9, 2, 1, 8, torch.float64, seed=4)
    _, lse = bsk.sparsek_attention(q, k, v, s, 2, 2, return_lse=True)
    assert lse.dtype == torch.float64
    assert isinstance(bsk.attention(q, k, v), torch.Tensor)  # return_lse=False: a tensor


def test_matches_reference():
    q, k, v, s = make(2, 11, 17, 4, 2, 8, seed=5)
    out, lse = bsk.sparsek_attention(q, k, v, s, 3, 4, return_lse=True)
    r_out, r_lse = ref.sparsek_attention_ref(q, k, v, s, 3, 4)
    assert torch.equal(out, r_out) and torch.equal(lse, r_lse)
    out, lse = bsk.attention(q, k, v, causal=True, scale=0.5, return_lse=True)
    r_out, r_lse = ref.attention_ref(q, k, v, True, 0.5)
    assert torch.equal(out, r_out) and torch.equal(lse, r_lse)


def test_strided_views_no_copy_needed():
    """BHSD storage viewed as BSHD gives the same result as contiguous inputs; a last dim that
    is not contiguous is accepted too (copied)."""
    q, k, v, s = make(2, 9, 13, 4, 2, 8, seed=6, bhsd=True)
    assert not q.is_contiguous()
    out = bsk.sparsek_attention(q, k, v, s, 3, 2)
    ref_out = bsk.sparsek_attention(q.contiguous(), k.contiguous(), v.contiguous(), s, 3, 2)
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
    qt = q.contiguous().transpose(1, 3).contiguous().transpose(1, 3)  # last dim stride != 1
    assert qt.stride(-1) != 1
    torch.testing.assert_close(bsk.attention(qt, k, v, causal=True),
                               bsk.attention(q.contiguous(), k, v, causal=True),
                               rtol=1e-6, atol=1e-6)
    st = s.t().contiguous().t() if s.dim() == 2 else s.transpose(0, 2).contiguous().transpose(0, 2)
    torch.testing.assert_close(bsk.sparsek_attention(q, k, v, st, 3, 2), out)


def test_sparsek_large_k_equals_dense_causal():
    """SPEC section 2: SparseK with k_select >= Sk is dense causal attention."""
    q, k, v, s = make(1, 10, 14, 4, 2, 8, torch.float64, seed=7)
    for w in (0, 3):
        out, lse = bsk.sparsek_attention(q, k, v, s, 14, w, return_lse=True)
        d_out, d_lse = bsk.attention(q, k, v, causal=True, return_lse=True)
        torch.testing.assert_close(out, d_out)
        torch.testing.assert_close(lse, d_lse)


@pytest.mark.parametrize("B,Sq,Sk", [(0, 4, 4), (2, 0, 4), (1, 3, 0), (1, 1, 1)])
def test_degenerate_sizes(B, Sq, Sk):
    """Empty batches / sequences run (and differentiate) without error; a causal row that sees
    no key has out 0 and lse -inf."""
    q, k, v, s = make(B, Sq, Sk, 2, 1, 8, seed=25, grad=True)
    out, lse = bsk.attention(q, k, v, causal=True, return_lse=True)
    (out.sum() + lse.nan_to_num(0.0, 0.0, 0.0).sum()).backward()
    if Sk == 0:
        assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()
    if Sq <= Sk:
        out, lse = bsk.sparsek_attention(q, k, v, s, 2, 2, return_lse=True)
        (out.sum() + lse.sum()).backward()
        assert out.shape == q.shape and lse.shape == (B, 2, Sq)


def test_nan_scores_give_nan_rows():
    """SPEC: a row whose candidates include a non-finite score (with n_p > k) is NaN; others
    are not affected."""
    q, k, v, s = make(1, 6, 6, 2, 1, 8, seed=26)
    s[0, 0, 0] = float("nan")
    out = bsk.sparsek_attention(q, k, v, s, 1, 2)
    # window 2: candidates of p are j <= p - 2; n_p > 1 from p = 3 on, and they include j = 0.
    assert torch.isnan(out[0, 3:]).all() and torch.isfinite(out[0, :3]).all()


def test_select_and_operator_agree():
    """The explicit selection and the per-query summary describe the same sets and gates."""
    B, Sk, Hkv, Sq, ks, w = 2, 40, 3, 25, 5, 4
    s = torch.randn(B, Sk, Hkv, generator=gen(8)) * 2
    idx, gate = bsk.sparsek_select(s, Sq, ks, w)
    tau, tv, ti, na = bsk.sparsek_operator(s, Sq, ks, w)
    assert idx.shape == gate.shape == (B, Sq, Hkv, ks) and idx.dtype == torch.int64
    assert tau.shape == (B, Hkv, Sq) and ti.dtype == na.dtype == torch.int32
    r = ref.sparsek_selection_ref(s, Sq, ks, w)
    assert torch.equal(idx, r[0]) and torch.equal(gate, r[1])
    for b in range(B):
        for h in range(Hkv):
            u = s[b, :, h]
            for i in range(Sq):
                p = Sk - Sq + i
                n_p = max(0, p - w + 1)
                sel = {int(j) for j in idx[b, i, h] if j >= 0}
                if n_p <= ks:
                    assert sel == set(range(n_p)) and torch.isneginf(tau[b, h, i])
                    continue
                member = {j for j in range(n_p)
                          if (u[j] > tv[b, h, i]) or (u[j] == tv[b, h, i] and j >= ti[b, h, i])}
                assert sel == member
                g = (u[idx[b, i, h]] - tau[b, h, i]).clamp(0, 1)
                torch.testing.assert_close(gate[b, i, h], g)


# ------------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------------


def test_gradcheck_sparsek_float64():
    q, k, v, _ = make(1, 8, 10, 2, 1, 4, torch.float64, seed=9, grad=True)
    # Distinct scores within 2.5 of each other: most rows have unsaturated selected keys (the
    # gradient through tau is exercised) and no finite-difference step crosses a kink.
    s = (torch.rand(1, 10, 1, generator=gen(9), dtype=torch.float64) * 2.5).requires_grad_()
    assert (bsk.sparsek_operator(s.detach(), 8, 3, 2)[3] > 0).sum() >= 4

    def f(q, k, v, s):
        out, lse = bsk.sparsek_attention(q, k, v, s, 3, 2, return_lse=True)
        return out, lse
    assert torch.autograd.gradcheck(f, (q, k, v, s), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_dense_float64(causal):
    q, k, v, _ = make(1, 5, 7, 2, 1, 4, torch.float64, seed=10, grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v: bsk.attention(q, k, v, causal=causal, return_lse=True), (q, k, v))


def test_gradcheck_operator_float64():
    """tau and theta_val as functions of the scores (sparsek_select_bwd)."""
    # Scores spread over 2.5 with no gap >= 1 between neighbours: where two consecutive scores
    # are >= 1 apart, f(t) = k on an interval, tau (its left end, by convention) has
    # derivative 0 by the SparseK rule (A_p is empty) while a finite difference sees 1.
    s = (torch.rand(1, 15, 2, generator=gen(11), dtype=torch.float64) * 2.5).requires_grad_()
    # Sq = 12 of Sk = 15, window 2: query rows 0, 1 have n_p <= 3 = k (tau = -inf, which a
    # finite difference cannot handle); the others run the operator.
    def f(s):
        tau, theta_val, _, _ = bsk.sparsek_operator(s, 12, 3, 2)
        return tau[..., 2:], theta_val[..., 2:]
    assert torch.autograd.gradcheck(f, (s,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("use_lse", [False, True])
def test_sparsek_backward_vs_autograd_reference(use_lse):
    """The op's backward (explicit slow path, float32) against autograd through the
    differentiable reference in float64 -- two independent derivations of the gradient."""
    q, k, v, s = make(2, 24, 31, 4, 2, 16, seed=12, grad=True)
    g = gen(13)
    dout = torch.randn(2, 24, 4, 16, generator=g)
    dlse = torch.randn(2, 4, 24, generator=g)

    def loss(out, lse):
        return (out * dout.to(out.dtype)).sum() + (use_lse and (lse * dlse.to(lse.dtype)).sum())

    out, lse = bsk.sparsek_attention(q, k, v, s, 5, 6, return_lse=True)
    got = torch.autograd.grad(loss(out, lse), (q, k, v, s))
    x64 = [t.detach().double().requires_grad_() for t in (q, k, v, s)]
    r_out, r_lse = ref.sparsek_attention_ref(*x64, 5, 6)
    want = torch.autograd.grad(loss(r_out, r_lse), x64)
    for name, a, b in zip("q k v scores".split(), got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5, msg=name)


def test_dense_backward_vs_autograd_reference():
    q, k, v, _ = make(1, 20, 26, 4, 1, 8, seed=14, bhsd=True)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = bsk.attention(q, k, v, causal=True)
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), dout)
    x64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
    want = torch.autograd.grad(ref.attention_ref(*x64, True)[0], x64, dout.double())
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


def test_scores_grad_through_cast():
    """bf16 scores are cast to float32 for the selection; the gradient comes back in bf16."""
    q, k, v, s = make(1, 8, 8, 2, 2, 8, seed=15)
    s16 = s.to(torch.bfloat16).requires_grad_()
    bsk.sparsek_attention(q, k, v, s16, 2, 2).sum().backward()
    assert s16.grad is not None and s16.grad.dtype == torch.bfloat16


def test_only_lse_used():
    q, k, v, s = make(1, 8, 8, 2, 2, 8, seed=16, grad=True)
    _, lse = bsk.sparsek_attention(q, k, v, s, 2, 2, return_lse=True)
    lse.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


# ------------------------------------------------------------------------------------------------
# the fallback and its warning
# ------------------------------------------------------------------------------------------------


def _count_fallback_warnings(fn):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")  # defeat Python's own de-duplication
        fn()
    return [w for w in rec if issubclass(w.category, bsk.FallbackWarning)]


def test_fallback_warns_exactly_once():
    _backend.reset_warnings()
    q, k, v, s = make(1, 8, 8, 2, 2, 8, seed=17, grad=True)

    def calls():
        for _ in range(3):
            bsk.attention(q, k, v, causal=True).sum().backward()
            bsk.sparsek_attention(q, k, v, s, 2, 2).sum().backward()
            bsk.sparsek_operator(s, 8, 2, 2)
    got = _count_fallback_warnings(calls)
    assert len(got) == 1, [str(w.message) for w in got]
    msg = str(got[0].message)
    assert msg.startswith("blackwell_sparsek: CUDA kernels unavailable (tensors are on cpu)")
    assert "slow path" in msg
    assert got[0].filename == __file__  # points at the caller, not into the package
    assert not _count_fallback_warnings(calls)  # and never again in this process


def test_call_counters():
    q, k, v, s = make(1, 8, 8, 2, 2, 8, seed=24, grad=True)
    before = _backend.calls.copy()
    bsk.sparsek_attention(q, k, v, s, 2, 2).sum().backward()
    diff = _backend.calls - before
    assert diff == {("reference", "sparsek_attention_fwd"): 1,
                    ("reference", "sparsek_attention_bwd"): 1}, diff


def test_forced_reference_is_silent():
    _backend.reset_warnings()
    q, k, v, s = make(1, 8, 8, 2, 2, 8, seed=18)
    with _backend.force_reference():
        assert not _count_fallback_warnings(lambda: bsk.sparsek_attention(q, k, v, s, 2, 2))
    _backend.reset_warnings()


def test_fallback_reasons(monkeypatch):
    """The decision table of _backend.choose, without needing a GPU."""
    cpu = torch.device("cpu")
    assert _backend.choose("op", cpu)[0] == "device:cpu"
    monkeypatch.setattr(_backend, "_C_loaded", True)
    monkeypatch.setattr(_backend, "_C", None)
    monkeypatch.setattr(_backend, "_C_error", "ImportError: not built")
    key, reason = _backend.choose("op", torch.device("cuda", 0))
    assert key == "no_extension" and "not built" in reason

    class FakeC:  # an extension whose kernels run everywhere
        @staticmethod
        def cuda_kernels_available(index):
            return True
    monkeypatch.setattr(_backend, "_C", FakeC)
    dev = torch.device("cuda", 0)
    assert _backend.choose("op", dev, torch.float16, 128, torch.float32) is None
    assert _backend.choose("op", dev, torch.float32, 128)[0] == "dtype:torch.float32"
    assert _backend.choose("op", dev, torch.bfloat16, 96)[0] == "head_dim:96"
    assert _backend.choose("op", dev, torch.float16, 64, torch.float64)[0].startswith("scores")
    with _backend.force_reference():
        assert _backend.choose("op", dev, torch.float16, 64) == ("", "")


def test_kernel_operand_layouts():
    t = torch.randn(2, 3, 4, 8)
    assert _backend.kernel_operand(t.transpose(1, 2)).data_ptr() == t.data_ptr()  # no copy
    assert _backend.kernel_operand(t.transpose(2, 3)).is_contiguous()
    r = torch.randn(2, 3, 4, 8, requires_grad=True)
    assert not _backend.kernel_operand(r).requires_grad


@requires_cuda
def test_not_implemented_falls_back(monkeypatch):
    """A lean build without the needed instantiation raises NotImplementedError: the op warns
    once and runs the reference."""
    class LeanC:
        @staticmethod
        def cuda_kernels_available(index):
            return True

        @staticmethod
        def attention_fwd(*args):
            raise NotImplementedError("attention_fwd: instantiation not in this build")
    monkeypatch.setattr(_backend, "_C_loaded", True)
    monkeypatch.setattr(_backend, "_C", LeanC)
    _backend.reset_warnings()
    q, k, v, _ = make(1, 8, 8, 2, 2, 64, torch.float16, device="cuda", seed=19)
    got = _count_fallback_warnings(lambda: bsk.attention(q, k, v))
    assert len(got) == 1 and "instantiation not in this build" in str(got[0].message)
    with _backend.force_reference():
        want = bsk.attention(q, k, v)
    torch.testing.assert_close(bsk.attention(q, k, v), want)
    _backend.reset_warnings()


# ------------------------------------------------------------------------------------------------
# kernel == fallback on a Hopper GPU
# ------------------------------------------------------------------------------------------------

EPS = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _fa_rule(got, fallback, truth, eps, what):
    """FlashAttention's rule: kernel error <= 2 x (fallback error) + eps, NaN placement equal."""
    got, fallback, truth = got.double(), fallback.double(), truth.double()
    assert torch.equal(torch.isnan(got), torch.isnan(truth)), f"{what}: NaN placement"
    fin = torch.isfinite(truth)
    err = (got - truth)[fin].abs().max().item() if fin.any() else 0.0
    err_fb = (fallback - truth)[fin].abs().max().item() if fin.any() else 0.0
    assert err <= 2 * err_fb + eps, f"{what}: {err:.3g} > 2 x {err_fb:.3g} + {eps}"


def _in_every_build(dtype, D):
    # fp16 / D = 128 is the lean instantiation set, compiled into every CUDA build.
    return dtype == torch.float16 and D == 128


GPU_CASES = [
    # B, Sq, Sk, H, Hkv, D, k_select, window, bhsd
    (2, 200, 200, 4, 2, 128, 16, 32, False),
    (1, 77, 300, 8, 2, 64, 64, 0, True),
    (1, 1, 257, 4, 4, 128, 32, 16, False),     # decode-like row
    (1, 130, 130, 2, 1, 64, 300, 8, False),    # k > Sk
]


@requires_hopper
@pytest.mark.parametrize("case", GPU_CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_equals_fallback(case, dtype):
    B, Sq, Sk, H, Hkv, D, ks, w, bhsd = case
    q, k, v, s = make(B, Sq, Sk, H, Hkv, D, dtype, device="cuda", seed=20, bhsd=bhsd)
    before = _backend.calls["kernel", "sparsek_attention_fwd"]
    out, lse = bsk.sparsek_attention(q, k, v, s, ks, w, return_lse=True)
    if _in_every_build(dtype, D):
        assert _backend.calls["kernel", "sparsek_attention_fwd"] == before + 1, \
            "the kernel did not run: this test would compare the fallback with itself"
    with _backend.force_reference():
        fb_out, fb_lse = bsk.sparsek_attention(q, k, v, s, ks, w, return_lse=True)
        t_out, t_lse = bsk.sparsek_attention(*(t.double() for t in (q, k, v)), s.double(), ks,
                                             w, return_lse=True)
    _fa_rule(out, fb_out, t_out, EPS[dtype], "sparsek out")
    torch.testing.assert_close(lse.double(), t_lse, rtol=1e-4, atol=1e-3)
    for causal in (False, True):
        before = _backend.calls["kernel", "attention_fwd"]
        out, lse = bsk.attention(q, k, v, causal=causal, return_lse=True)
        if _in_every_build(dtype, D):
            assert _backend.calls["kernel", "attention_fwd"] == before + 1
        with _backend.force_reference():
            fb_out, _ = bsk.attention(q, k, v, causal=causal, return_lse=True)
            t_out, t_lse = bsk.attention(*(t.double() for t in (q, k, v)), causal=causal,
                                         return_lse=True)
        _fa_rule(out, fb_out, t_out, EPS[dtype], f"dense out causal={causal}")
        fin = torch.isfinite(t_lse)
        assert torch.equal(torch.isneginf(lse), torch.isneginf(t_lse))
        torch.testing.assert_close(lse.double()[fin], t_lse[fin], rtol=1e-4, atol=1e-3)


@requires_hopper
def test_kernel_select_equals_fallback():
    s = torch.randn(2, 500, 3, device="cuda", generator=gen(21, "cuda")) * 3
    for sq, ks, w in ((500, 32, 64), (100, 7, 0), (1, 600, 10)):
        before = _backend.calls["kernel", "sparsek_select"]
        tau, tv, ti, na = bsk.sparsek_operator(s, sq, ks, w)
        assert _backend.calls["kernel", "sparsek_select"] == before + 1
        with _backend.force_reference():
            r = bsk.sparsek_operator(s, sq, ks, w)
        assert torch.equal(ti, r[2]), "theta_idx differs"
        assert torch.equal(tv, r[1])
        assert torch.equal(torch.isneginf(tau), torch.isneginf(r[0]))
        torch.testing.assert_close(tau, r[0], rtol=1e-5, atol=1e-5)
        assert (na - r[3]).abs().max().item() <= 1  # a key within rounding of tau or tau + 1


@requires_hopper
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_forward_gradients(dtype):
    """Kernel forward + PyTorch backward against the all-reference computation."""
    q, k, v, s = make(1, 150, 150, 4, 2, 128, dtype, device="cuda", seed=22, grad=True)
    dout = torch.randn(1, 150, 4, 128, device="cuda", dtype=dtype)
    got = torch.autograd.grad(bsk.sparsek_attention(q, k, v, s, 16, 32), (q, k, v, s), dout)
    with _backend.force_reference():
        fb = torch.autograd.grad(bsk.sparsek_attention(q, k, v, s, 16, 32), (q, k, v, s), dout)
    x64 = [t.detach().double().requires_grad_() for t in (q, k, v, s)]
    with _backend.force_reference():
        truth = torch.autograd.grad(bsk.sparsek_attention(*x64, 16, 32), x64, dout.double())
    for name, a, b, t in zip("q k v scores".split(), got, fb, truth):
        _fa_rule(a, b, t, 5 * EPS[dtype], f"d{name}")


@requires_cuda
def test_cuda_fallback_or_kernel_on_current_stream():
    """The ops run on the current stream: results produced on a side stream are complete once
    that stream is synchronised."""
    q, k, v, s = make(1, 64, 64, 2, 2, 64, torch.float16, device="cuda", seed=23)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = bsk.sparsek_attention(q, k, v, s, 8, 8)
    side.synchronize()
    with _backend.force_reference():
        want = bsk.sparsek_attention(q, k, v, s, 8, 8)
    torch.testing.assert_close(out, want, rtol=2e-3, atol=2e-3)

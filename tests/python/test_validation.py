"""Argument checking of the public API: every invalid argument raises the right exception type
with a message naming the argument, before anything runs (CPU only, no kernels needed)."""
import re

import pytest
import torch

import blackwell_sparsek as bsk
from blackwell_sparsek import _backend

pytestmark = pytest.mark.filterwarnings("ignore::blackwell_sparsek.FallbackWarning")

B, SQ, SK, H, HKV, D = 2, 16, 32, 4, 2, 8


def qkv(dtype=torch.float32, sq=SQ, sk=SK):
    return (torch.randn(B, sq, H, D, dtype=dtype), torch.randn(B, sk, HKV, D, dtype=dtype),
            torch.randn(B, sk, HKV, D, dtype=dtype))


def scores(sk=SK, hkv=HKV, dtype=torch.float32):
    return torch.randn(B, sk, hkv, dtype=dtype)


def raises(exc, fn, arg, call, match=None):
    """``call()`` raises ``exc`` whose message starts with "<fn>: argument '<arg>'"."""
    with pytest.raises(exc) as ei:
        call()
    msg = str(ei.value)
    assert msg.startswith(f"{fn}: argument '{arg}'"), msg
    if match is not None:
        assert re.search(match, msg), msg
    return msg


def sk_call(**over):
    q, k, v = qkv()
    args = dict(q=q, k=k, v=v, scores=scores(), k_select=4, window=4)
    args.update(over)
    return lambda: bsk.sparsek_attention(**args)


def dense_call(**over):
    q, k, v = qkv()
    args = dict(q=q, k=k, v=v)
    args.update(over)
    return lambda: bsk.attention(**args)


# ---- shapes ----------------------------------------------------------------------------------


def test_scores_shape_message():
    msg = raises(ValueError, "sparsek_attention", "scores",
                 sk_call(scores=torch.randn(B, SK, 2 * HKV)))
    assert msg == (f"sparsek_attention: argument 'scores' must have shape [B, Sk, Hkv] = "
                   f"[{B}, {SK}, {HKV}], got [{B}, {SK}, {2 * HKV}]")


@pytest.mark.parametrize("bad", [torch.randn(B, SK), torch.randn(B, SK, HKV, 1),
                                 torch.randn(B + 1, SK, HKV), torch.randn(B, SK - 1, HKV)])
def test_scores_shapes(bad):
    raises(ValueError, "sparsek_attention", "scores", sk_call(scores=bad))


@pytest.mark.parametrize("name,shape", [
    ("q", (B, SQ, H)), ("q", (B, SQ, H, D, 1)), ("k", (B, SK, HKV)), ("v", (SK, HKV, D)),
    ("k", (B + 1, SK, HKV, D)),          # batch differs from q
    ("k", (B, SK, HKV, D + 1)),          # head dim differs from q
    ("v", (B, SK + 1, HKV, D)),          # v unlike k
    ("v", (B, SK, HKV, D + 8)),          # different value head dim is not supported
    ("k", (B, SK, 3, D)),                # H % Hkv != 0
])
@pytest.mark.parametrize("api", ["attention", "sparsek_attention"])
def test_qkv_shapes(api, name, shape):
    bad = torch.randn(*shape)
    if name == "k" and len(shape) == 4 and shape[2] == 3:
        # Hkv = 3 for k and v alike, so that the error is the head ratio and nothing else
        call = (dense_call if api == "attention" else sk_call)(
            k=bad, v=torch.randn(*shape), **({} if api == "attention" else
                                                {"scores": torch.randn(B, SK, 3)}))
    else:
        call = (dense_call if api == "attention" else sk_call)(**{name: bad})
    raises(ValueError, api, name, call)


def test_head_ratio_message():
    q, k, v = torch.randn(1, 4, 6, 8), torch.randn(1, 4, 4, 8), torch.randn(1, 4, 4, 8)
    msg = raises(ValueError, "attention", "k", lambda: bsk.attention(q, k, v))
    assert "divides" in msg and "6" in msg and "4" in msg


def test_zero_head_dim():
    q, k, v = torch.randn(1, 4, 2, 0), torch.randn(1, 4, 2, 0), torch.randn(1, 4, 2, 0)
    raises(ValueError, "attention", "q", lambda: bsk.attention(q, k, v))


def test_sparsek_sq_gt_sk():
    q, k, v = qkv(sq=SK + 1)
    raises(ValueError, "sparsek_attention", "q", lambda: bsk.sparsek_attention(
        q, k, v, scores(), 4, 4), match="Sq <= Sk")


def test_dense_sq_gt_sk_is_fine():
    q, k, v = qkv(sq=SK + 3)
    out = bsk.attention(q, k, v, causal=True)
    assert out.shape == q.shape


# ---- k_select / window / scale / flags ---------------------------------------------------------


@pytest.mark.parametrize("name,value,exc", [
    ("k_select", -1, ValueError), ("window", -3, ValueError),
    ("k_select", 2.5, TypeError), ("window", 4.0, TypeError),
    ("k_select", True, TypeError), ("window", "4", TypeError), ("k_select", None, TypeError),
    ("k_select", torch.tensor(4), None),  # a 0-d integer tensor has __index__: accepted
])
def test_k_window_values(name, value, exc):
    call = sk_call(**{name: value})
    if exc is None:
        call()
    else:
        raises(exc, "sparsek_attention", name, call)


def test_k_and_window_both_zero():
    raises(ValueError, "sparsek_attention", "k_select", sk_call(k_select=0, window=0),
           match="both be 0")


@pytest.mark.parametrize("value,exc", [
    (0.0, ValueError), (-1.0, ValueError), (float("inf"), ValueError), (float("nan"), ValueError),
    ("0.1", TypeError), (torch.tensor(0.1), TypeError), (True, TypeError),
])
@pytest.mark.parametrize("api", ["attention", "sparsek_attention"])
def test_scale(api, value, exc):
    call = (dense_call if api == "attention" else sk_call)(scale=value)
    raises(exc, api, "scale", call)


@pytest.mark.parametrize("name", ["causal", "return_lse"])
def test_flags(name):
    raises(TypeError, "attention", name, dense_call(**{name: 1}))


def test_return_lse_flag_sparsek():
    raises(TypeError, "sparsek_attention", "return_lse", sk_call(return_lse="yes"))


# ---- dtypes, types, devices ------------------------------------------------------------------


@pytest.mark.parametrize("api", ["attention", "sparsek_attention"])
@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_non_tensor(api, name):
    call = (dense_call if api == "attention" else sk_call)(**{name: [[1.0]]})
    raises(TypeError, api, name, call, match="torch.Tensor")


def test_non_tensor_scores():
    raises(TypeError, "sparsek_attention", "scores", sk_call(scores=1.0))


@pytest.mark.parametrize("api", ["attention", "sparsek_attention"])
@pytest.mark.parametrize("name", ["k", "v"])
def test_mixed_dtypes(api, name):
    bad = torch.randn(B, SK, HKV, D, dtype=torch.float16)
    raises(TypeError, api, name, (dense_call if api == "attention" else sk_call)(**{name: bad}),
           match="dtype of q")


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64])
def test_non_float_q(dtype):
    q = torch.zeros(B, SQ, H, D, dtype=dtype)
    k = torch.zeros(B, SK, HKV, D, dtype=dtype)
    raises(TypeError, "attention", "q", lambda: bsk.attention(q, k, k))


def test_integer_scores():
    raises(TypeError, "sparsek_attention", "scores",
           sk_call(scores=torch.zeros(B, SK, HKV, dtype=torch.int64)), match="floating")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_scores_are_cast(dtype):
    """Any floating score dtype is accepted (cast to float32) and gives the float32 result."""
    q, k, v = qkv()
    s = scores()
    s_cast = s.to(dtype)
    out = bsk.sparsek_attention(q, k, v, s_cast, 4, 4)
    ref = bsk.sparsek_attention(q, k, v, s_cast.float(), 4, 4)
    assert torch.equal(out, ref)


def test_device_mismatch_meta():
    """A second device without a GPU: the meta device (the check runs before any compute)."""
    q, k, v = qkv()
    raises(ValueError, "attention", "k",
           lambda: bsk.attention(q, k.to("meta"), v), match="device of q")
    raises(ValueError, "sparsek_attention", "scores",
           sk_call(scores=scores().to("meta")), match="device of q")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_mismatch_cuda():
    q, k, v = qkv()
    raises(ValueError, "attention", "v", lambda: bsk.attention(q, k, v.cuda()))


# ---- sparsek_select / sparsek_operator ---------------------------------------------------------


@pytest.mark.parametrize("api", ["sparsek_select", "sparsek_operator"])
def test_select_args(api):
    f = getattr(bsk, api)
    s = scores()
    raises(TypeError, api, "scores", lambda: f(s.numpy(), 4, 2, 2))
    raises(ValueError, api, "scores", lambda: f(s[0], 4, 2, 2))
    raises(TypeError, api, "scores", lambda: f(s.long(), 4, 2, 2))
    raises(ValueError, api, "seqlen_q", lambda: f(s, SK + 1, 2, 2), match="<= Sk")
    raises(ValueError, api, "seqlen_q", lambda: f(s, -1, 2, 2))
    raises(TypeError, api, "seqlen_q", lambda: f(s, 4.0, 2, 2))
    raises(ValueError, api, "k_select", lambda: f(s, 4, -2, 2))
    raises(ValueError, api, "window", lambda: f(s, 4, 2, -2))
    raises(ValueError, api, "k_select", lambda: f(s, 4, 0, 0))


# ---- module -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(d_model=30, n_heads=4, n_kv_heads=2), ValueError, "n_heads"),
    (dict(d_model=32, n_heads=4, n_kv_heads=3), ValueError, "n_kv_heads"),
    (dict(d_model=32, n_heads=0, n_kv_heads=1), ValueError, "n_heads"),
    (dict(d_model=32, n_heads=4, n_kv_heads=2, k_select=-1), ValueError, "k_select"),
    (dict(d_model=32, n_heads=4, n_kv_heads=2, k_select=0, window=0), ValueError, "k_select"),
    (dict(d_model=32, n_heads=4, n_kv_heads=2, rotary=3), TypeError, "rotary"),
    (dict(d_model=32.0, n_heads=4, n_kv_heads=2), TypeError, "d_model"),
    (dict(d_model=32, n_heads=4, n_kv_heads=2, scale=0.0), ValueError, "scale"),
])
def test_module_args(kwargs, exc, name):
    args = dict(k_select=4, window=4)
    args.update(kwargs)
    raises(exc, "SparseKAttention", name, lambda: bsk.SparseKAttention(**args))


def test_module_input():
    m = bsk.SparseKAttention(32, 4, 2, 4, 4)
    fn = "SparseKAttention.forward"
    raises(ValueError, fn, "x", lambda: m(torch.randn(2, 8, 16)), match=r"\[B, S, 32\]")
    raises(ValueError, fn, "x", lambda: m(torch.randn(8, 32)))
    raises(TypeError, fn, "x", lambda: m(None))


# ---- nothing runs on error ---------------------------------------------------------------------


def test_no_launch_on_error(monkeypatch):
    """Validation happens before the op is called: a bad argument never reaches it."""
    called = []
    monkeypatch.setattr(bsk.ops, "sparsek_attention_fwd",
                        lambda *a, **k: called.append(1) or (_ for _ in ()).throw(AssertionError))
    with pytest.raises(ValueError):
        sk_call(window=-1)()
    assert not called


def test_kernels_available_on_cpu():
    if not torch.cuda.is_available():
        assert bsk.kernels_available() is False
    assert bsk.kernels_available("cpu") is False
    assert isinstance(bsk.build_info(), str)
    # The build says which CUDA flags its kernels have (a candidate build's -D flags).
    assert "; CUDA flags: " in bsk.build_info()
    assert _backend.choose("x", torch.device("cpu")) is not None


def test_select_workspace_size_on_cpu_and_bad_arguments():
    """The selection's workspace query: no device scratch for CPU tensors, and the argument
    checks (naming the argument) of the selection itself."""
    from blackwell_sparsek import _C
    u = scores()
    S = u.shape[1]
    assert _C.sparsek_select_workspace_size(u, S, 4, 4) == 0
    raises(ValueError, "sparsek_select_workspace_size", "seqlen_q",
           lambda: _C.sparsek_select_workspace_size(u, S + 1, 4, 4))
    raises(ValueError, "sparsek_select_workspace_size", "k_select",
           lambda: _C.sparsek_select_workspace_size(u, S, -1, 4))
    raises(TypeError, "sparsek_select_workspace_size", "scores",
           lambda: _C.sparsek_select_workspace_size(u.half(), S, 4, 4))
    raises(ValueError, "sparsek_select_workspace_size", "scores",
           lambda: _C.sparsek_select_workspace_size(u[0], S, 4, 4))


def test_sparsek_workspace_size_on_cpu_and_bad_arguments():
    """The native workspace query: no device scratch for CPU tensors, and the same argument
    checks (naming the argument) as the forward itself."""
    from blackwell_sparsek import _C
    q, k, v = qkv(torch.float16)
    assert _C.sparsek_attention_fwd_workspace_size(q, k, v, scores(), 4, 4) == 0
    raises(ValueError, "sparsek_attention_fwd_workspace_size", "scores",
           lambda: _C.sparsek_attention_fwd_workspace_size(q, k, v, scores(hkv=2 * HKV), 4, 4))
    raises(ValueError, "sparsek_attention_fwd_workspace_size", "k_select",
           lambda: _C.sparsek_attention_fwd_workspace_size(q, k, v, scores(), -1, 4))

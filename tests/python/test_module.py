"""SparseKAttention: structure, the scoring network, gradients against a float64 computation,
torch.compile(fullgraph=True) against eager, and a few training steps that lower the loss.
CPU parts need no GPU; GPU parts (the kernel forward) skip without a Hopper GPU and _C."""
import copy
import os
import shutil

import pytest
import torch
from torch import nn

import blackwell_sparsek as bsk
from blackwell_sparsek import modules as bsk_modules
from blackwell_sparsek import reference as ref

HOPPER = torch.cuda.is_available() and bsk.kernels_available()
requires_hopper = pytest.mark.skipif(not HOPPER,
                                     reason="needs an sm_90 GPU and the built _C extension")
pytestmark = pytest.mark.filterwarnings("ignore::blackwell_sparsek.FallbackWarning")


def gen(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def rope(q, k, positions):
    """A plain rotary embedding (half-split convention), the kind of hook the module takes."""
    d = q.shape[-1]
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=q.device, dtype=torch.float64) / d))
    ang = positions.to(torch.float64)[:, None] * inv[None, :]             # [S, d/2]
    cos, sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]

    def rot(x):
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        c, s = cos.to(x.dtype), sin.to(x.dtype)
        return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)
    return rot(q), rot(k)


class TinyModel(nn.Module):
    """SparseKAttention + a linear head (a residual block, as in a transformer)."""

    def __init__(self, d_model=32, n_heads=4, n_kv_heads=2, k_select=4, window=4, n_out=5,
                 **kw):
        super().__init__()
        self.attn = bsk.SparseKAttention(d_model, n_heads, n_kv_heads, k_select, window, **kw)
        self.head = nn.Linear(d_model, n_out, device=kw.get("device"), dtype=kw.get("dtype"))

    def forward(self, x):
        return self.head(x + self.attn(x))


# ------------------------------------------------------------------------------------------------
# structure and the scoring network
# ------------------------------------------------------------------------------------------------


def test_structure_and_shapes():
    m = bsk.SparseKAttention(48, 6, 2, k_select=3, window=5, bias=True)
    assert m.head_dim == 8
    assert m.q_proj.weight.shape == (48, 48) and m.k_proj.weight.shape == (16, 48)
    assert m.v_proj.weight.shape == (16, 48) and m.o_proj.weight.shape == (48, 48)
    assert m.q_proj.bias is not None
    assert m.w_score.shape == (48, 2) and m.slope.shape == (2,)
    assert "k_select=3" in repr(m)
    y = m(torch.randn(3, 11, 48))
    assert y.shape == (3, 11, 48)
    m1 = bsk.SparseKAttention(48, 6, 6, 3, 5, per_head_slope=False, score_slope_init=0.25)
    assert m1.slope.shape == () and m1.slope.item() == 0.25


def test_scores_network_float32():
    m = bsk.SparseKAttention(32, 4, 2, 4, 4, score_slope_init=0.1, dtype=torch.bfloat16)
    assert m.w_score.dtype == torch.float32 and m.q_proj.weight.dtype == torch.bfloat16
    x = torch.randn(2, 9, 32, dtype=torch.bfloat16)
    u = m.scores(x)
    assert u.dtype == torch.float32 and u.shape == (2, 9, 2)
    want = x.float() @ m.w_score + 0.1 * torch.arange(9.0)[:, None]
    torch.testing.assert_close(u, want)
    y = m(x)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape


def test_module_equals_functional():
    torch.manual_seed(0)
    m = bsk.SparseKAttention(32, 4, 2, 3, 2, score_slope_init=0.05)
    x = torch.randn(2, 13, 32)
    q = m.q_proj(x).view(2, 13, 4, 8)
    k = m.k_proj(x).view(2, 13, 2, 8)
    v = m.v_proj(x).view(2, 13, 2, 8)
    u = x @ m.w_score + m.slope * torch.arange(13.0)[:, None]
    o, _ = ref.sparsek_attention_ref(q, k, v, u, 3, 2)
    torch.testing.assert_close(m(x), m.o_proj(o.reshape(2, 13, 32)), rtol=1e-5, atol=1e-6)


def test_rotary_hook():
    seen = {}

    def hook(q, k, positions):
        seen.update(q=q.shape, k=k.shape, pos=positions.clone())
        return rope(q, k, positions)
    m = bsk.SparseKAttention(32, 4, 2, 3, 3, rotary=hook)
    x = torch.randn(2, 10, 32)
    y = m(x)
    assert seen["q"] == (2, 10, 4, 8) and seen["k"] == (2, 10, 2, 8)
    assert torch.equal(seen["pos"], torch.arange(10))
    m.rotary = None
    assert not torch.allclose(y, m(x))  # the hook changed the result


def test_causal():
    """The output at position t does not depend on inputs after t."""
    torch.manual_seed(1)
    m = bsk.SparseKAttention(32, 4, 1, 2, 3, score_slope_init=0.02)
    x = torch.randn(1, 16, 32)
    x2 = x.clone()
    x2[:, 9:] = torch.randn(1, 7, 32)
    torch.testing.assert_close(m(x)[:, :9], m(x2)[:, :9])


# ------------------------------------------------------------------------------------------------
# gradients against float64
# ------------------------------------------------------------------------------------------------


def _ref_attention(q, k, v, scores, k_select, window, scale=None, return_lse=False):
    """Autograd through the differentiable reference (no custom op, no explicit backward)."""
    out, lse = ref.sparsek_attention_ref(q, k, v, scores, k_select, window, scale)
    return (out, lse) if return_lse else out


@pytest.mark.parametrize("n_kv_heads,per_head_slope,rotary", [(2, True, None), (4, False, rope)])
def test_gradients_vs_float64(monkeypatch, n_kv_heads, per_head_slope, rotary):
    """float32 module through the ops (explicit PyTorch backward) against the same module in
    float64 with autograd through the reference: every parameter, w_score and slope included."""
    torch.manual_seed(2)
    m = TinyModel(32, 4, n_kv_heads, k_select=4, window=3, score_slope_init=0.03,
                  per_head_slope=per_head_slope, rotary=rotary)
    m64 = copy.deepcopy(m).double()
    x = torch.randn(2, 20, 32)
    target = torch.randn(2, 20, 5)

    nn.functional.mse_loss(m(x), target).backward()
    with monkeypatch.context() as mp:
        mp.setattr(bsk_modules, "sparsek_attention", _ref_attention)
        nn.functional.mse_loss(m64(x.double()), target.double()).backward()

    got = dict(m.named_parameters())
    for name, p64 in m64.named_parameters():
        g, g64 = got[name].grad, p64.grad
        assert g is not None and g64 is not None, name
        assert g64.abs().max() > 0, f"{name}: zero gradient, the test would prove nothing"
        torch.testing.assert_close(g.double(), g64, rtol=2e-4, atol=2e-6, msg=name)


# ------------------------------------------------------------------------------------------------
# torch.compile
# ------------------------------------------------------------------------------------------------


def _compile_vs_eager(backend, device="cpu", dtype=torch.float32, dynamic=False, lengths=(24,),
                      d_model=32, n_heads=4, autocast=None):
    torch.manual_seed(3)
    torch._dynamo.reset()
    m = TinyModel(d_model, n_heads, 2, k_select=4, window=4, score_slope_init=0.01,
                  device=device, dtype=dtype)
    mc = copy.deepcopy(m)
    compiled = torch.compile(mc, backend=backend, fullgraph=True, dynamic=dynamic)
    ctx = (torch.autocast(device_type=device, dtype=autocast) if autocast
           else torch.autocast(device_type=device, enabled=False))
    tol = dict(rtol=1e-5, atol=1e-5) if autocast is None else dict(rtol=2e-2, atol=2e-2)
    for S in lengths:
        x = torch.randn(2, S, d_model, device=device, dtype=dtype)
        with ctx:
            y = m(x)
            yc = compiled(x)
        torch.testing.assert_close(yc, y, **tol)
        y.float().square().mean().backward()
        yc.float().square().mean().backward()
        for (name, p), pc in zip(m.named_parameters(), mc.parameters()):
            torch.testing.assert_close(pc.grad, p.grad, **tol, msg=name)
            p.grad = pc.grad = None


def test_compile_fullgraph_aot_eager():
    _compile_vs_eager("aot_eager")


def test_compile_fullgraph_dynamic_shapes():
    """Fake implementations with symbolic sequence lengths: one graph, two lengths."""
    _compile_vs_eager("aot_eager", dynamic=True, lengths=(17, 29))


def test_compile_functional_fullgraph():
    q, k, v = (torch.randn(1, 12, 2, 8, requires_grad=True) for _ in range(3))
    s = torch.randn(1, 12, 2, requires_grad=True)

    def f(q, k, v, s):
        o1, lse = bsk.sparsek_attention(q, k, v, s, 3, 2, return_lse=True)
        o2 = bsk.attention(q.transpose(1, 2).contiguous().transpose(1, 2), k, v, causal=True)
        tau = bsk.sparsek_operator(s, 12, 3, 2)[0]
        return o1.sum() + lse.sum() + o2.sum() + tau[..., 4:].sum()
    torch._dynamo.reset()
    fc = torch.compile(f, backend="aot_eager", fullgraph=True)
    want = torch.autograd.grad(f(q, k, v, s), (q, k, v, s))
    got = torch.autograd.grad(fc(q, k, v, s), (q, k, v, s))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


_INDUCTOR_CPU = os.environ.get("BSK_TEST_INDUCTOR") == "1"


@pytest.mark.skipif(not _INDUCTOR_CPU or shutil.which(os.environ.get("CXX", "g++")) is None,
                    reason="inductor on CPU compiles C++ (~15-30 s here): set BSK_TEST_INDUCTOR=1")
def test_compile_fullgraph_inductor_cpu():
    _compile_vs_eager("inductor")


@requires_hopper
def test_compile_fullgraph_cuda_kernels():
    """The kernel path under torch.compile (bf16 autocast, head dim 64), default backend."""
    _compile_vs_eager("inductor", device="cuda", d_model=256, n_heads=4, autocast=torch.bfloat16)


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------


def _train(model, x, target, steps, lr, autocast=None):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    w0 = model.attn.w_score.detach().clone()
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=x.device.type, dtype=autocast or torch.float32,
                            enabled=autocast is not None):
            loss = nn.functional.mse_loss(model(x).float(), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert not torch.equal(model.attn.w_score.detach(), w0), "the scoring network did not train"
    return losses


def test_training_lowers_loss_cpu():
    torch.manual_seed(4)
    model = TinyModel(32, 4, 2, k_select=4, window=4, score_slope_init=0.01)
    x = torch.randn(4, 24, 32)
    # A target that needs attention: each position should output a summary of old tokens.
    target = torch.cumsum(x[..., :5], dim=1) / torch.arange(1, 25.0)[None, :, None]
    losses = _train(model, x, target, steps=25, lr=1e-2)
    assert losses[-1] < 0.7 * losses[0], losses


@requires_hopper
def test_training_lowers_loss_gpu():
    """Kernel forward (bf16 autocast, head dim 64) + PyTorch backward."""
    torch.manual_seed(5)
    model = TinyModel(256, 4, 2, k_select=16, window=16, score_slope_init=0.01, device="cuda")
    x = torch.randn(2, 256, 256, device="cuda")
    target = torch.cumsum(x[..., :5], dim=1) / torch.arange(1, 257.0, device="cuda")[None, :,
                                                                                     None]
    losses = _train(model, x, target, steps=20, lr=3e-3, autocast=torch.bfloat16)
    assert losses[-1] < 0.7 * losses[0], losses

"""``SparseKAttention``: a self-attention layer with its own projections and scoring network."""

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor, nn

from . import _validate as V
from .functional import sparsek_attention

__all__ = ["SparseKAttention"]

RotaryHook = Callable[[Tensor, Tensor, Tensor], Tuple[Tensor, Tensor]]


class SparseKAttention(nn.Module):
    """Causal SparseK self-attention (SPEC section 1) for ``x`` [B, S, d_model].

    ``forward(x)``: ``q = x W_q``, ``k = x W_k``, ``v = x W_v`` split into heads (BSHD,
    ``head_dim = d_model // n_heads``; GQA with ``n_kv_heads`` kv heads), optional rotary
    embedding ``q, k = rotary(q, k, positions)``, the scores of the scoring network

        u[b, j, h] = x[b, j] . w_score[:, h] + slope[h] * j        (positions j = 0..S-1)

    computed in float32 (float64 for a float64 module or input; autocast is disabled for it:
    the selection compares score differences against 1, which half precision cannot resolve at
    long positions), then :func:`blackwell_sparsek.sparsek_attention` with
    ``k_select``/``window`` and ``y = o W_o``. Every query attends to its last ``window``
    positions (itself included) and to ``k_select`` older positions picked by ``u`` through
    the SparseK gates, so the layer is causal. Gradients reach every parameter, ``w_score``
    and ``slope`` included (through the differentiable top-k).

    Args:
        d_model: model width; must be divisible by ``n_heads``.
        n_heads, n_kv_heads: query heads and key/value heads (``n_heads % n_kv_heads == 0``).
        k_select, window: SparseK parameters (ints >= 0, not both 0).
        bias: bias in the four projections.
        rotary: optional callable ``(q [B,S,H,D], k [B,S,Hkv,D], positions [S] int64) ->
            (q, k)`` applied before the attention.
        score_slope_init: initial value of the position slope (0: no recency preference; a
            positive value favours recent keys among the candidates).
        per_head_slope: one learnable slope per kv head (default) or one shared scalar.
        scale: softmax scale (default ``1 / sqrt(head_dim)``).
        device, dtype: of the parameters. ``w_score`` and ``slope`` are kept in float32 (float64
            when ``dtype`` is float64) whatever ``dtype`` is, for the precision of the scores.

    Parameters: ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (``nn.Linear``), ``w_score``
    [d_model, n_kv_heads] (init normal, std ``1 / sqrt(d_model)``: scores of order 1, the scale
    of the gate's linear range), ``slope`` [n_kv_heads] or [].
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, k_select: int, window: int,
                 bias: bool = False, rotary: Optional[RotaryHook] = None,
                 score_slope_init: float = 0.0, per_head_slope: bool = True,
                 scale: Optional[float] = None, device=None, dtype=None):
        super().__init__()
        fn = "SparseKAttention"
        d_model = V.integer(fn, "d_model", d_model)
        n_heads = V.integer(fn, "n_heads", n_heads)
        n_kv_heads = V.integer(fn, "n_kv_heads", n_kv_heads)
        if n_heads == 0 or d_model % n_heads != 0:
            raise ValueError(f"{fn}: argument 'n_heads' must divide d_model = {d_model}, got "
                             f"{n_heads}")
        if n_kv_heads == 0 or n_heads % n_kv_heads != 0:
            raise ValueError(f"{fn}: argument 'n_kv_heads' must divide n_heads = {n_heads}, "
                             f"got {n_kv_heads}")
        self.k_select, self.window = V.k_window(fn, k_select, window)
        if rotary is not None and not callable(rotary):
            raise TypeError(f"{fn}: argument 'rotary' must be callable or None, got "
                            f"{type(rotary).__name__}")
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.scale = V.scale(fn, scale, self.head_dim)
        self.rotary = rotary
        self.score_slope_init = float(score_slope_init)
        fk = {"device": device, "dtype": dtype}
        hd = self.head_dim
        self.q_proj = nn.Linear(d_model, n_heads * hd, bias=bias, **fk)
        self.k_proj = nn.Linear(d_model, n_kv_heads * hd, bias=bias, **fk)
        self.v_proj = nn.Linear(d_model, n_kv_heads * hd, bias=bias, **fk)
        self.o_proj = nn.Linear(n_heads * hd, d_model, bias=bias, **fk)
        sdt = torch.float64 if dtype == torch.float64 else torch.float32
        self.w_score = nn.Parameter(torch.empty(d_model, n_kv_heads, device=device, dtype=sdt))
        self.slope = nn.Parameter(torch.empty((n_kv_heads,) if per_head_slope else (),
                                              device=device, dtype=sdt))
        self.reset_scoring_parameters()

    def reset_scoring_parameters(self) -> None:
        nn.init.normal_(self.w_score, std=self.d_model ** -0.5)
        nn.init.constant_(self.slope, self.score_slope_init)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
                f"head_dim={self.head_dim}, k_select={self.k_select}, window={self.window}")

    def scores(self, x: Tensor) -> Tensor:
        """The scoring network: ``u`` [B, S, n_kv_heads], float32 (float64 for float64)."""
        S = x.shape[1]
        cdt = torch.float64 if (x.dtype == torch.float64
                                or self.w_score.dtype == torch.float64) else torch.float32
        with torch.autocast(device_type=x.device.type, enabled=False):
            pos = torch.arange(S, device=x.device, dtype=cdt)
            u = x.to(cdt) @ self.w_score.to(cdt)
            return u + self.slope.to(cdt) * pos[:, None]

    def forward(self, x: Tensor) -> Tensor:
        fn = "SparseKAttention.forward"
        V.tensor(fn, "x", x)
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"{fn}: argument 'x' must have shape [B, S, d_model] = "
                             f"[B, S, {self.d_model}], got {list(x.shape)}")
        B, S, _ = x.shape
        hd = self.head_dim
        q = self.q_proj(x).view(B, S, self.n_heads, hd)
        k = self.k_proj(x).view(B, S, self.n_kv_heads, hd)
        v = self.v_proj(x).view(B, S, self.n_kv_heads, hd)
        if self.rotary is not None:
            positions = torch.arange(S, device=x.device)
            q, k = self.rotary(q, k, positions)
        u = self.scores(x)
        o = sparsek_attention(q, k, v, u, self.k_select, self.window, self.scale)
        return self.o_proj(o.reshape(B, S, self.n_heads * hd))

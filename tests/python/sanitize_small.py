"""Small dense and SparseK launches for compute-sanitizer (memcheck, racecheck)."""
import os
import time

import torch

from blackwell_sparsek import _C

_T0 = time.time()


def mark(what):
    """Progress with timestamps, flushed: a run cut short by its timeout says where it was."""
    torch.cuda.synchronize()
    print(f"sanitize_small [{time.time() - _T0:6.1f} s]: {what} done", flush=True)


# Two persistent CTAs: each runs several work tiles, so the rings and barrier phases wrap
# across work tiles under the sanitizer too.
os.environ["BSK_ATTN_MAX_CTAS"] = "2"

s = torch.cuda.current_stream().cuda_stream
for dtype, D in [(torch.float16, 128), (torch.bfloat16, 64)]:
    for causal in (False, True):
        q = torch.randn(1, 200, 2, D, device="cuda", dtype=dtype)
        k = torch.randn(1, 333, 1, D, device="cuda", dtype=dtype)
        v = torch.randn_like(k)
        out = torch.empty_like(q)
        lse = torch.empty(1, 2, 200, device="cuda")
        _C.attention_fwd(q, k, v, out, lse, causal, None, s)
    q = torch.randn(1, 333, 2, D, device="cuda", dtype=dtype)
    u = torch.randn(1, 333, 1, device="cuda")
    _C.sparsek_attention_fwd(q, k, v, u, torch.empty_like(q), None, 64, 32, None, s)
    # Union of 600+ keys: more gathered tiles than pipeline stages, so the rings wrap on them.
    q = torch.randn(1, 700, 1, D, device="cuda", dtype=dtype)
    k = torch.randn(1, 700, 1, D, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    u = torch.randn(1, 700, 1, device="cuda")
    _C.sparsek_attention_fwd(q, k, v, u, torch.empty_like(q), None, 600, 16, None, s)
    mark(f"{dtype} D={D}")
# Selection over many passes (about 1050 computed rows), with tied scores.
u = torch.randint(0, 5, (1, 1100, 1), device="cuda").float() * 0.5
q = torch.randn(1, 1100, 1, 64, device="cuda", dtype=torch.float16)
k = torch.randn_like(q)
_C.sparsek_attention_fwd(q, k, torch.randn_like(k), u, torch.empty_like(q), None, 50, 8, None, s)
mark("tied-score selection")
# 2049..4096 keys: the selection's chunk table in the workspace (global memory), 256 chunks.
u = torch.randn(1, 2500, 2, device="cuda")
q = torch.randn(1, 2500, 2, 64, device="cuda", dtype=torch.float16)
k = torch.randn_like(q)
_C.sparsek_attention_fwd(q, k, torch.randn_like(k), u, torch.empty_like(q), None, 100, 64, None, s)
mark("workspace-table selection")
print("sanitize_small: done")

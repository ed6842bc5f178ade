"""The benchmark's pure logic on synthetic inputs (CPU only, fast): key / FLOP / byte counting,
floors, per-row metrics, tier classification (including the below-the-floor logic), targets,
JSON schema, markdown, the PNG chart, the FlexAttention masks against the reference selection
and torch's create_block_mask, the Nsight Compute CSV parsing, and the no-GPU exit of
bench/run_bench.py."""
import json
import os
import random
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(REPO, "bench")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

import nsight  # noqa: E402
import peers as P  # noqa: E402
import report as R  # noqa: E402
import workloads as W  # noqa: E402

SEED_SHAPE = W.Shape(16, 96, 96, 4096, 4096, 128)
TIER_SHAPE = W.Shape(16, 96, 96, 512, 512, 64)
H100 = dict(copy_bytes_per_s=3.0e12, copy_tbps=3.0, gemm_fp16_flops_per_s=746e12,
            gemm_fp16_tflops=746.0, gemm_bf16_flops_per_s=776e12, gemm_bf16_tflops=776.0)


# ---------------------------------------------------------------------------------------------
# counting
# ---------------------------------------------------------------------------------------------


def test_clamped_linear_sum_matches_brute_force():
    rng = random.Random(0)
    for _ in range(500):
        x0 = rng.randint(-50, 50)
        x1 = x0 + rng.randint(-3, 80)
        cap = rng.choice([None, 0, 1, 5, 17, 100])
        brute = sum(max(0, x) if cap is None else min(cap, max(0, x))
                    for x in range(x0, x1 + 1))
        assert W.clamped_linear_sum(x0, x1, cap) == brute, (x0, x1, cap)


@pytest.mark.parametrize("sq,sk", [(1, 1), (1, 4096), (7, 7), (113, 1000), (1000, 1000),
                                   (4097, 4097), (5, 3), (64, 200)])
@pytest.mark.parametrize("causal", [False, True])
def test_dense_keys(sq, sk, causal):
    assert W.dense_keys_total(sq, sk, causal) == sum(W.dense_keys_per_row(sq, sk, causal))


def test_dense_causal_is_half_plus_diagonal():
    s = 4096
    assert W.dense_keys_total(s, s, True) == s * (s + 1) // 2
    assert W.dense_keys_total(s, s, False) == s * s
    # decode: one end-aligned query sees every key
    assert W.dense_keys_total(1, s, True) == s


@pytest.mark.parametrize("sq,sk,k,w", [
    (64, 64, 8, 8), (64, 64, 8, 0), (64, 64, 0, 8), (64, 64, 100, 4), (64, 64, 4, 100),
    (1, 4096, 256, 256), (113, 1000, 64, 64), (1000, 1000, 1000, 1), (1, 1, 0, 1),
    (1, 1, 1, 0), (300, 300, 1024, 1024), (4096, 4096, 256, 256), (257, 4097, 256, 0)])
def test_sparsek_keys_formula_matches_rows(sq, sk, k, w):
    assert W.sparsek_keys_total(sq, sk, k, w) == sum(W.sparsek_keys_per_row(sq, sk, k, w))


@pytest.mark.parametrize("sq,sk,k,w", [(48, 48, 8, 8), (48, 48, 5, 0), (48, 48, 0, 6),
                                       (17, 48, 6, 3), (48, 48, 100, 4), (48, 48, 4, 100),
                                       (1, 48, 8, 8)])
def test_sparsek_keys_match_reference_selection(sq, sk, k, w):
    from blackwell_sparsek import reference as ref
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(2, sk, 3, generator=g)
    idx, _ = ref.sparsek_selection_ref(scores, sq, k, w)
    n_sel = int((idx >= 0).sum()) // (2 * 3) if k > 0 else 0
    n_win = sum(min(w, sk - sq + i + 1) for i in range(sq)) if w > 0 else 0
    assert n_sel + n_win == W.sparsek_keys_total(sq, sk, k, w)


def test_sparsek_with_k_at_least_s_equals_causal():
    s = 300
    for w in (0, 1, 17, 300):
        assert W.sparsek_keys_total(s, s, s, w) == W.dense_keys_total(s, s, True)


def test_sparsek_rejects_sq_above_sk():
    with pytest.raises(ValueError):
        W.sparsek_keys_total(10, 5, 1, 1)


@pytest.mark.parametrize("sq,sk,n", [(4096, 4096, 512), (512, 512, 128), (300, 300, 200),
                                     (1000, 1000, 1), (128, 384, 256), (1, 4096, 512)])
def test_block_packed_keys(sq, sk, n):
    assert W.block_packed_keys_total(sq, sk, n) == sum(W.block_packed_keys_per_row(sq, sk, n))
    assert W.block_packed_keys(n) % 128 == 0 and W.block_packed_keys(n) >= n


def test_flops_and_bytes_at_the_seed_shape():
    # SPEC section 5 / kernel notes: 1.319e13 FLOP dense, 6.44 GB of q/k/v/o
    dense = W.Workload("dense", "dense", "seed", SEED_SHAPE, causal=False)
    assert dense.flops() == 4 * 16 * 96 * 4096 * 4096 * 128
    assert abs(dense.flops() - 1.319e13) / 1.319e13 < 1e-3
    assert dense.io_bytes() == 4 * 16 * 4096 * 96 * 128 * 2
    assert abs(dense.io_bytes() / 1e9 - 6.44) < 0.01
    causal = W.Workload("dense_causal", "dense", "seed", SEED_SHAPE, causal=True)
    assert causal.flops() == 4 * 16 * 96 * 128 * (4096 * 4097 // 2)
    sk = W.Workload("sparsek_k256_w256", "sparsek", "seed", SEED_SHAPE, causal=True,
                    k_select=256, window=256)
    # every query attends <= 512 keys; all but the first 511 rows attend exactly 512
    per_row = W.sparsek_keys_per_row(4096, 4096, 256, 256)
    assert max(per_row) == 512 and per_row[511:] == [512] * (4096 - 511)
    assert sk.flops() == 4 * 16 * 96 * 128 * sum(per_row)
    # the kernel notes' 1.65e12 counts 512 keys for every row: the exact count is ~6% less
    upper = 4 * 16 * 96 * 4096 * 512 * 128
    assert abs(upper - 1.65e12) / 1.65e12 < 0.01
    assert 0.93 * upper < sk.flops() < upper


def test_gqa_bytes_and_decode():
    s = W.Shape(2, 32, 8, 1, 4096, 128, "bfloat16")
    assert W.io_bytes(s) == (2 * 2 * 1 * 32 * 128 + 2 * 2 * 4096 * 8 * 128) * 2
    w = W.Workload("decode", "decode", "decode", s, k_select=256, window=256)
    assert w.keys_total() == 4096
    assert W.impl_keys_total(w, "bsk_sparsek") == 512
    assert W.impl_keys_total(w, "sdpa_cudnn") == 4096


def test_shape_and_workload_validation():
    with pytest.raises(ValueError):
        W.Shape(1, 6, 4, 8, 8, 64)
    with pytest.raises(ValueError):
        W.Shape(1, 4, 4, 8, 8, 64, "int8")
    with pytest.raises(ValueError):
        W.Workload("x", "sparsek", "seed", TIER_SHAPE, k_select=0, window=0)
    with pytest.raises(ValueError):
        W.Workload("x", "bogus", "seed", TIER_SHAPE)
    assert SEED_SHAPE.label() == "B16 H96 S4096 D128 fp16"
    assert W.Shape(1, 8, 2, 1, 512, 64, "bfloat16").label() == "B1 H8 Hkv2 Sq1 Sk512 D64 bf16"


def test_workload_lists():
    ws = W.build_workloads()
    ids = [w.id for w in ws]
    assert ids[:3] == ["seed/dense_causal", "seed/sparsek_k256_w256", "seed/dense"]
    assert "tier_origin/sparsek_k64_w64" in ids and "decode/decode_ctx4096" in ids
    assert len(set(ids)) == len(ids)
    seed = {w.name: w for w in ws if w.section == "seed"}
    assert seed["dense_causal"].shape == SEED_SHAPE
    assert seed["dense_causal"].impls[:2] == ("sdpa_default", "bsk_dense_causal")
    for impl in ("sdpa_cudnn", "sdpa_flash", "sdpa_efficient", "fa4", "xformers",
                 "flex_causal", "flex_causal_flash"):
        assert impl in seed["dense_causal"].impls
    assert {"bsk_sparsek", "flex_token_level", "flex_block_packed"} <= \
        set(seed["sparsek_k256_w256"].impls)
    tier = {w.name: w for w in ws if w.section == "tier_origin"}
    assert tier["sparsek_k64_w64"].shape == TIER_SHAPE
    assert (tier["sparsek_k64_w64"].k_select, tier["sparsek_k64_w64"].window) == (64, 64)
    assert not any(w.section == "sweep" for w in ws)
    assert all(w.shape.B * w.shape.H <= 2 * 8 for w in W.build_workloads(quick=True))
    assert not any(w.kind == "decode" for w in W.build_workloads(decode=False))


def test_sweep_scales_batch_and_covers_the_grid():
    ws = [w for w in W.build_workloads(sweep=True) if w.section == "sweep"]
    sk = [w for w in ws if w.kind == "sparsek"]
    ks = {w.k_select for w in sk if w.shape.Sq == 4096 and w.window == 256 and
          w.shape.Hkv == w.shape.H}
    wins = {w.window for w in sk if w.shape.Sq == 4096 and w.k_select == 256 and
            w.shape.Hkv == w.shape.H}
    assert ks == {64, 1024, 256} - {256} | {64, 1024} and {64, 1024} <= ks
    assert {0, 1024} <= wins
    by_s = {w.shape.Sq: w.shape.B for w in sk}
    assert by_s[16384] == 4 and by_s[65536] == 1 and by_s[4096] == 16
    for w in sk:  # memory of q/k/v/o stays at the seed's
        assert w.io_bytes() <= W.io_bytes(SEED_SHAPE)
    assert any(w.shape.Hkv < w.shape.H for w in sk)
    # every new shape has its dense causal baseline workload
    dense = {W.shape_key(w.shape) for w in ws if w.kind == "dense" and w.causal}
    for w in sk:
        if w.shape != SEED_SHAPE:
            assert W.shape_key(w.shape) in dense
    # dense attention beside SDPA cuDNN at other lengths, D = 64 and bf16, causal and not
    dn = {(w.shape.Sq, w.shape.D, w.shape.dtype, w.causal): w for w in ws if w.kind == "dense"}
    for s in (1024, 2048, 8192, 16384):
        for causal in (False, True):
            w = dn[(s, 128, "float16", causal)]
            assert w.shape.B * s == 16 * 4096 and "sdpa_cudnn" in w.impls
    for key in ((4096, 64, "float16"), (4096, 128, "bfloat16")):
        assert {dn[key + (c,)].impls[1] for c in (False, True)} == {"bsk_dense",
                                                                   "bsk_dense_causal"}
    bf = [w for w in W.build_workloads(sweep=True, dtype="bfloat16") if w.name == "dense_fp16"]
    assert len(bf) == 1 and bf[0].shape.dtype == "float16"


def test_filter_workloads():
    ws = W.build_workloads()
    only = W.filter_workloads(ws, "sparsek*", "bsk_*")
    assert [w.id for w in only] == ["seed/sparsek_k256_w256", "tier_origin/sparsek_k64_w64"]
    assert all(w.impls == ("bsk_sparsek",) for w in only)
    tier = W.filter_workloads(ws, "tier_origin/*", None, "flex_*,fa4,xformers")
    assert {w.section for w in tier} == {"tier_origin"}
    assert not any(i.startswith("flex") or i in ("fa4", "xformers")
                   for w in tier for i in w.impls)
    assert W.filter_workloads(ws, "nothing-matches") == []


# ---------------------------------------------------------------------------------------------
# floors, rows, derived metrics
# ---------------------------------------------------------------------------------------------


def test_floor_arithmetic_matches_the_spec():
    dense = W.Workload("dense", "dense", "seed", SEED_SHAPE)
    f = R.floor_for(dense.flops(), dense.io_bytes(), 96, 3.0e12, 746e12)
    assert abs(f["io_floor_us_per_head"] - 22.4) < 0.1          # SPEC section 5
    assert abs(f["compute_floor_us_per_head"] - 184) < 1.0      # kernel notes
    assert f["floor_us_per_head"] == f["compute_floor_us_per_head"]
    assert f["bound"] == "compute"
    tier_causal = W.Workload("dense_causal", "dense", "tier_origin", TIER_SHAPE, causal=True)
    ft = R.floor_for(tier_causal.flops(), tier_causal.io_bytes(), 96, 3.0e12, 746e12)
    # q, k, v, o of B16 H96 S512 D64 fp16 = 403 MB -> 134 µs -> 1.40 µs/head at 3.0 TB/s
    # (the seed's 22.4 / 16: S / 8 and D / 2); SPEC section 4's "about 0.35" is 4x lower.
    assert abs(ft["io_floor_us_per_head"] - 1.398) < 0.01
    assert ft["bound"] == "I/O"
    none = R.floor_for(1, 1, 1, None, None)
    assert none["floor_ms"] is None and none["bound"] is None


def test_compute_floors_uses_the_dtype_rate():
    ws = [W.Workload("d", "dense", "seed", SEED_SHAPE),
          W.Workload("d", "dense", "bf", W.Shape(16, 96, 96, 4096, 4096, 128, "bfloat16"))]
    fl = R.compute_floors(ws, H100)
    assert fl["seed/d"]["compute_floor_ms"] == pytest.approx(ws[0].flops() / 746e12 * 1e3)
    assert fl["bf/d"]["compute_floor_ms"] == pytest.approx(ws[1].flops() / 776e12 * 1e3)
    assert fl["seed/d"]["keys_per_query"] == 4096


def _wl(name="dense_causal", section="seed", shape=SEED_SHAPE, **kw):
    kind = "sparsek" if name.startswith("sparsek") else "dense"
    if kind == "sparsek":
        kw.setdefault("k_select", 256)
        kw.setdefault("window", 256)
        kw.setdefault("causal", True)
    elif name.startswith("dense_causal"):
        kw.setdefault("causal", True)
    return W.Workload(name, kind, section, shape, **kw)


def test_make_row_metrics():
    w = _wl("dense_causal")
    r = R.make_row(w, "sdpa_cudnn", "ok", 13.0)
    assert r["us_per_head"] == pytest.approx(13.0 * 1000 / 96)
    assert r["tflops"] == pytest.approx(w.flops() / 13e-3 / 1e12)
    assert r["tbps"] == pytest.approx(w.io_bytes() / 13e-3 / 1e12)
    assert r["shape"]["causal"] is True and r["shape"]["Sq"] == 4096
    bad = R.make_row(w, "fa4", "not installed", 5.0)
    assert bad["ms"] is None and bad["us_per_head"] is None and bad["tflops"] is None
    nan = R.make_row(w, "x", "ok", float("nan"))
    assert nan["ms"] is None
    # block-packed FlexAttention counts its own keys
    sk = _wl("sparsek_k256_w256")
    bp = R.make_row(sk, "flex_block_packed", "ok", 1.0)
    assert bp["flops"] == 4 * 16 * 96 * 128 * W.block_packed_keys_total(4096, 4096, 512)
    assert R.make_row(sk, "bsk_sparsek", "ok", 1.0)["flops"] == sk.flops()


def _synthetic_rows():
    """A plausible H100 run (figures of SPEC section 5) plus project rows."""
    ws = W.build_workloads()
    by = {w.id: w for w in ws}
    t = {  # µs/head
        ("seed/dense_causal", "sdpa_default"): 210, ("seed/dense_causal", "sdpa_cudnn"): 135,
        ("seed/dense_causal", "bsk_dense_causal"): 120, ("seed/dense", "sdpa_default"): 392,
        ("seed/dense", "sdpa_cudnn"): 234, ("seed/dense", "bsk_dense"): 250,
        ("seed/sparsek_k256_w256", "bsk_sparsek"): 30,
        ("seed/sparsek_k256_w256", "flex_token_level"): 174,
        ("tier_origin/dense_causal", "sdpa_default"): 3.68,
        ("tier_origin/dense_causal", "sdpa_cudnn"): 2.21,
        ("tier_origin/dense_causal", "bsk_dense_causal"): 2.5,
        ("tier_origin/sparsek_k64_w64", "bsk_sparsek"): 1.5,
    }
    rows = []
    for (wid, impl), us in t.items():
        w = by[wid]
        rows.append(R.make_row(w, impl, "ok", us * w.shape.H / 1000))
    rows.append(R.make_row(by["seed/sparsek_k256_w256"], "flex_token_level_flash",
                           "not installed", None, error="flash-attn-4 missing"))
    rows.append(R.make_row(by["tier_origin/dense"], "bsk_dense", "kernel not built", None))
    return ws, rows


def test_attach_derived_speedups_and_floor_multiples():
    ws, rows = _synthetic_rows()
    floors = R.compute_floors(ws, H100)
    R.attach_derived(rows, floors)
    r = R.find_row(rows, "seed/dense_causal", "sdpa_cudnn")
    assert r["speedup_vs_sdpa_default"] == pytest.approx(210 / 135)
    assert r["x_floor"] == pytest.approx(r["ms"] / floors["seed/dense_causal"]["floor_ms"])
    sk = R.find_row(rows, "seed/sparsek_k256_w256", "bsk_sparsek")
    assert sk["speedup_vs_sdpa_default"] == pytest.approx(210 / 30)   # dense causal SDPA
    assert sk["speedup_reference"] == "seed/dense_causal"
    tsk = R.find_row(rows, "tier_origin/sparsek_k64_w64", "bsk_sparsek")
    assert tsk["speedup_vs_sdpa_default"] == pytest.approx(3.68 / 1.5)
    nb = R.find_row(rows, "tier_origin/dense", "bsk_dense")
    assert nb["speedup_vs_sdpa_default"] is None and nb["x_floor"] is None


# ---------------------------------------------------------------------------------------------
# tiers
# ---------------------------------------------------------------------------------------------


def test_tier_cell_boundaries():
    t1, t2, t3 = R.TIERS
    assert t1[1] == 3.820 and t1[2] is True          # Tier 1 <= 3.820
    assert t2[1] == 3.0 and t2[2] is False           # Tier 2 < 3.0
    assert t3[1] == 2.0 and t3[2] is False           # Tier 3 < 2.0
    assert R.tier_cell(3.820, 0.35, 3.820, True) == "reached"
    assert R.tier_cell(3.0, 0.35, 3.0, False) == "not reached"
    assert R.tier_cell(1.99, 0.35, 2.0, False) == "reached"
    assert R.tier_cell(2.5, 0.35, 2.0, False) == "not reached"


def test_tier_cell_below_the_floor():
    # dense causal at the seed shape: floor ~92 µs/head -> every tier is below the floor
    cell = R.tier_cell(120.0, 92.1, 3.820, True)
    assert cell.startswith("below the physical floor") and "92.1" in cell
    # the floor itself exactly at a strict threshold: unreachable
    assert R.tier_cell(None, 2.0, 2.0, False).startswith("below the physical floor")
    # ... but reachable for an inclusive one
    assert R.tier_cell(None, 3.82, 3.820, True) == "not measured"
    # never "reached" when not measured
    for floor in (None, 0.1, 50.0):
        for _, thr, inc in R.TIERS:
            assert "reached" not in R.tier_cell(None, floor, thr, inc).replace(
                "not reached", "")
    # a measurement under the computed floor is flagged, not silently accepted
    odd = R.tier_cell(1.0, 5.0, 2.0, False)
    assert odd.startswith("reached") and "check" in odd


def test_tier_status():
    assert R.tier_status(1.5, 0.3) == "Tier 3 reached"
    assert R.tier_status(2.5, 0.3) == "Tier 2 reached"
    assert R.tier_status(3.82, 0.3) == "Tier 1 reached"
    assert R.tier_status(7.64, 0.3).startswith("no tier reached (needs 2.00x")
    assert R.tier_status(None, 0.3) == "not measured"


def test_tier_table_on_a_synthetic_run():
    ws, rows = _synthetic_rows()
    floors = R.compute_floors(ws, H100)
    R.attach_derived(rows, floors)
    tt = R.tier_table(rows, floors, ws)
    assert tt["baseline"]["us_per_head"] == pytest.approx(210)
    got = {(r["section"], r["impl"], r["workload"]): r for r in tt["rows"]}
    seed_sk = got[("seed", "bsk_sparsek", "sparsek_k256_w256")]
    # SparseK at the seed shape: floor ~23 µs/head, so every tier is below the floor
    assert seed_sk["floor_us_per_head"] > 20
    assert all(c.startswith("below the physical floor") for c in seed_sk["tiers"].values())
    tier_sk = got[("tier_origin", "bsk_sparsek", "sparsek_k64_w64")]
    assert tier_sk["tiers"] == {"Tier 1": "reached", "Tier 2": "reached", "Tier 3": "reached"}
    assert tier_sk["status"] == "Tier 3 reached"
    assert tier_sk["x_vs_baseline"] == pytest.approx(210 / 1.5)
    tier_dc = got[("tier_origin", "bsk_dense_causal", "dense_causal")]
    assert tier_dc["tiers"]["Tier 3"] == "not reached" and tier_dc["status"] == "Tier 2 reached"
    nb = got[("tier_origin", "bsk_dense", "dense")]
    assert nb["us_per_head"] is None and nb["status"] == "not measured (kernel not built)"
    assert "reached" not in " ".join(nb["tiers"].values()).replace("not reached", "")
    assert got[("tier_origin", "sdpa_cudnn", "dense_causal")]["project"] is False


def test_tier_table_without_baseline():
    ws = W.build_workloads()
    tt = R.tier_table([], R.compute_floors(ws, H100), ws)
    assert tt["baseline"]["us_per_head"] is None
    assert tt["baseline"]["status"] == "not measured"
    assert all(r["us_per_head"] is None for r in tt["rows"])
    assert all(r["project"] for r in tt["rows"])   # SDPA context rows only when measured


def test_targets():
    ws, rows = _synthetic_rows()
    floors = R.compute_floors(ws, H100)
    R.attach_derived(rows, floors)
    tg = {t["target"]: t for t in R.targets_table(rows, H100, ws)}
    assert tg["SparseK fwd, seed shape, k=256 w=256 (selection included)"]["status"] == "met"
    v = tg["SparseK fwd vs flex_token_level (same key set)"]
    assert v["measured"] == pytest.approx(174 / 30) and v["status"] == "met"
    assert tg["SparseK fwd vs flex_token_level_flash (same key set)"]["status"].startswith(
        "not measured")
    assert tg["SparseK fwd vs cuDNN SDPA causal (seed shape)"]["measured"] == \
        pytest.approx(135 / 30)
    assert tg["Dense fwd vs cuDNN SDPA, non-causal (seed shape)"]["status"] == "not met"
    assert tg["Dense fwd vs cuDNN SDPA, causal (seed shape)"]["measured"] == \
        pytest.approx(135 / 120)
    assert tg["Tier-origin shape: SparseK k=64 w=64 in Tier 3"]["status"] == "met"
    share = "SparseK selection, seed shape: share of the call"
    assert tg[share]["status"] == "not measured (no kernel split in this run)"
    sk = R.find_row(rows, "seed/sparsek_k256_w256", "bsk_sparsek")
    for frac, status in ((0.05, "met"), (0.28, "not met")):
        sk.update(selection_ms=frac * sk["ms"], selection_share=frac)
        t = {t["target"]: t for t in R.targets_table(rows, H100, ws)}[share]
        assert t["status"] == status and t["measured"] == pytest.approx(100 * frac)
    for t in tg.values():
        assert t["status"] in ("met", "not met") or t["status"].startswith("not measured")
    empty = R.targets_table([], H100, ws)
    assert all(t["status"].startswith("not measured") for t in empty)


# ---------------------------------------------------------------------------------------------
# documents: JSON, markdown, PNG
# ---------------------------------------------------------------------------------------------


def _doc():
    ws, rows = _synthetic_rows()
    rows.append(R.make_row(ws[0], "sdpa_flash", "error", None,
                           error="RuntimeError: boom | with a pipe\nsecond line"))
    rows[0].update(allclose=True, max_abs_err=1e-4, mean_abs_err=float("nan"))
    env = dict(gpu_name="NVIDIA H100 80GB HBM3", sm_count=132, driver="560.35", cuda="13.0",
               torch="2.11.0", triton="3.6.0", cudnn="91900", git_commit="abcdef0123456789",
               git_commit_short="abcdef0", peers={"xformers": "not installed"})
    doc = dict(env=env, config=dict(warmup=3, repeat=15, max_row_seconds=15, flush_l2=False),
               ceilings=dict(H100), results=rows, notes=["a note"],
               generated_utc="2026-01-02 03:04 UTC")
    R.finalize(doc, ws)
    return doc


def test_selection_kernels_are_told_apart():
    """The bsk_sparsek row's selection split counts the selection's kernels, never the
    attention kernel (names as torch.profiler reports them)."""
    import run_bench as RB
    selection = [
        "void bsk::kernels::(anonymous namespace)::select_smem_kernel<256, 16, 3, true>(bsk::"
        "kernels::(anonymous namespace)::KArgs)",
        "bsk::kernels::(anonymous namespace)::select_global_kernel(bsk::kernels::(anonymous "
        "namespace)::KArgs)",
        "bsk::kernels::(anonymous namespace)::prep_sort_kernel(bsk::kernels::(anonymous "
        "namespace)::KArgs, unsigned int*, int*, int*, int)",
        "void cub::CUB_300001_SM_900::detail::radix_sort::DeviceSegmentedRadixSortKernel<cub::"
        "CUB_300001_SM_900::detail::radix_sort::policy_hub<unsigned int, int, int>::Policy1000>",
    ]
    other = ["void bsk::sm90::attention_fwd_sm90_kernel<bsk::sm90::AttnTraits<cutlass::half_t, "
             "128, 128, 2>, bsk::sm90::SparseKMode>(bsk::sm90::AttnArgs)", "Memset (Device)"]
    assert all(RB.is_selection_kernel(n) for n in selection)
    assert not any(RB.is_selection_kernel(n) for n in other)


def test_json_schema_and_strictness():
    doc = _doc()
    text = R.to_json(doc)
    back = json.loads(text)                     # strict JSON (no NaN tokens)
    assert "NaN" not in text
    assert R.validate_doc(back) == []
    for k in ("env", "ceilings", "floors", "results", "tiers", "targets", "workloads"):
        assert k in back
    r0 = back["results"][0]
    for k in R.REQUIRED_ROW_KEYS:
        assert k in r0
    assert r0["mean_abs_err"] == "nan"
    assert set(r0["shape"]) >= {"B", "H", "Hkv", "Sq", "Sk", "D", "dtype"}
    assert back["floors"]["seed/dense"]["io_bytes"] == W.io_bytes(SEED_SHAPE)
    bad = dict(back)
    bad["results"] = [dict(r0, ms=None)]
    assert R.validate_doc(bad)
    assert R.validate_doc({}) != []


def test_markdown_rendering():
    md = R.render_markdown(_doc())
    for heading in ("## Environment", "## Ceilings", "## Floors per workload", "## Tier table",
                    "## Targets", "## Results", "### Seed shape", "### Tier-origin shape",
                    "### Decode", "## Notes"):
        assert heading in md
    assert "below the physical floor (floor" in md
    assert "NVIDIA H100 80GB HBM3" in md and "abcdef0123456789" in md
    assert "boom \\| with a pipe" in md          # pipes escaped, one line per row
    for line in md.splitlines():
        if line.startswith("| sdpa_flash | error"):
            assert line.count(" | ") >= 11
    assert "**210" in md or "210" in md          # the baseline
    assert "kernel not built" in md and "not installed" in md


def test_fmt():
    assert R.fmt(None) == "—"
    assert R.fmt(True) == "yes"
    assert R.fmt(1234567) == "1,234,567"
    assert R.fmt(3.82) == "3.82"
    assert R.fmt(0.00012) == "1.20e-04"
    assert R.fmt(float("nan")) == "nan"
    assert R.fmt(223.57) == "224"


def test_outputs_written(tmp_path):
    doc = _doc()
    stem = R.output_stem(doc["env"], __import__("datetime").datetime(2026, 1, 2))
    assert stem == "nvidia-h100-80gb-hbm3-20260102-abcdef0"
    paths = R.write_outputs(doc, str(tmp_path / "out"), stem)
    assert set(paths) == {"md", "json", "png"}
    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(paths["png"]) > 5000
    assert json.load(open(paths["json"]))["env"]["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert open(paths["md"]).read().startswith("# BlackwellSparseK benchmark")
    assert not [p for p in os.listdir(tmp_path / "out") if p.startswith(".tmp-")]


def test_chart_without_measurements(tmp_path):
    ws = W.build_workloads()
    doc = dict(env={}, ceilings={}, results=[])
    R.finalize(doc, ws)
    p = R.write_chart(doc, str(tmp_path / "empty.png"))
    with open(p, "rb") as f:
        assert f.read(4) == b"\x89PNG"


def test_gpu_slug():
    assert R.gpu_slug("NVIDIA H200") == "nvidia-h200"
    assert R.gpu_slug(None) == "unknown-gpu"
    assert R.output_stem({}, __import__("datetime").datetime(2026, 5, 6), "-quick") == \
        "unknown-gpu-20260506-nogit-quick"


# ---------------------------------------------------------------------------------------------
# FlexAttention masks (CPU, tiny)
# ---------------------------------------------------------------------------------------------


def _membership_from_selection(scores, sq, k, w, H):
    """[B, H, Sq, Sk] bool from the reference selection + the window (brute force)."""
    from blackwell_sparsek import reference as ref
    B, sk, hkv = scores.shape
    idx, _ = ref.sparsek_selection_ref(scores, sq, k, w)   # [B, Sq, Hkv, k]
    m = torch.zeros(B, hkv, sq, sk, dtype=torch.bool)
    for b in range(B):
        for i in range(sq):
            p = sk - sq + i
            for h in range(hkv):
                if k > 0:
                    for j in idx[b, i, h].tolist():
                        if j >= 0:
                            m[b, h, i, j] = True
                if w > 0:
                    m[b, h, i, max(0, p - w + 1):p + 1] = True
    return m.repeat_interleave(H // hkv, dim=1)


@pytest.mark.parametrize("B,H,hkv,sq,sk,k,w", [(1, 2, 2, 40, 40, 6, 5), (2, 4, 2, 40, 40, 6, 0),
                                               (1, 3, 1, 23, 40, 0, 7), (1, 2, 2, 40, 40, 50, 3),
                                               (1, 2, 1, 1, 40, 6, 5)])
def test_sparsek_mask_mod_is_the_selection(B, H, hkv, sq, sk, k, w):
    from torch.nn.attention.flex_attention import create_mask
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(B, sk, hkv, generator=g)
    scores[:, 5] = scores[:, 9]  # ties: the more recent key wins
    tv, ti, how, _ = P.sparsek_theta(scores, sq, k, w)
    mm = P.sparsek_mask_mod(scores.permute(0, 2, 1).contiguous(), tv, ti, sq, sk, w, H // hkv)
    got = create_mask(mm, B, H, sq, sk, device="cpu")
    want = _membership_from_selection(scores, sq, k, w, H)
    assert torch.equal(got, want)
    # and the same through broadcast index tensors (what build_block_mask and the bench's
    # ungated reference evaluate)
    direct = mm(torch.arange(B).view(-1, 1, 1, 1), torch.arange(H).view(1, -1, 1, 1),
                torch.arange(sq).view(1, 1, -1, 1), torch.arange(sk).view(1, 1, 1, -1))
    assert torch.equal(direct.expand(B, H, sq, sk), want)
    kr, tr = P.sparsek_ranks(scores, tv, ti)
    rank_mm = P.sparsek_rank_mask_mod(kr, tr, sq, sk, w, H // hkv)
    assert torch.equal(create_mask(rank_mm, B, H, sq, sk, device="cpu"), want)


def _dense_blocks(num, idx, ncols):
    out = torch.zeros(*num.shape, ncols, dtype=torch.bool)
    for pos in torch.cartesian_prod(*[torch.arange(n) for n in num.shape]).reshape(
            -1, num.dim()).tolist():
        n = int(num[tuple(pos)])
        for c in idx[tuple(pos)][:n].tolist():
            out[tuple(pos) + (c,)] = True
    return out


@pytest.mark.parametrize("kind", ["causal", "sparsek", "packed"])
@pytest.mark.parametrize("sq,sk", [(64, 64), (50, 70), (64, 96)])
def test_build_block_mask_matches_create_block_mask(kind, sq, sk):
    from torch.nn.attention.flex_attention import create_block_mask
    blk = 16
    B, H = (2, 2) if kind == "sparsek" else (1, 1)
    if kind == "causal":
        mm = P.causal_mask_mod(sq, sk)
    elif kind == "packed":
        mm = P.block_packed_mask_mod(sq, sk, 20, blk)
    else:
        g = torch.Generator().manual_seed(5)
        scores = torch.randn(B, sk, H, generator=g)
        tv, ti, _, _ = P.sparsek_theta(scores, sq, 5, 4)
        mm = P.sparsek_mask_mod(scores.permute(0, 2, 1).contiguous(), tv, ti, sq, sk, 4, 1)
    ours = P.build_block_mask(mm, B, H, sq, sk, "cpu", block=blk, max_elems=blk * 40)
    theirs = create_block_mask(mm, B, H, sq, sk, device="cpu", BLOCK_SIZE=blk)
    nk = -(-sk // blk)
    for a, b in ((ours.kv_num_blocks, theirs.kv_num_blocks),
                 (ours.full_kv_num_blocks, theirs.full_kv_num_blocks)):
        assert torch.equal(a, b)
    assert torch.equal(_dense_blocks(ours.kv_num_blocks, ours.kv_indices, nk),
                       _dense_blocks(theirs.kv_num_blocks, theirs.kv_indices, nk))
    assert torch.equal(_dense_blocks(ours.full_kv_num_blocks, ours.full_kv_indices, nk),
                       _dense_blocks(theirs.full_kv_num_blocks, theirs.full_kv_indices, nk))
    assert ours.seq_lengths == (sq, sk)
    st = P.block_mask_stats(ours)
    assert 0 <= st["skipped_fraction"] < 1


def test_block_packed_mask_is_whole_blocks_with_the_counted_keys():
    from torch.nn.attention.flex_attention import create_mask
    sq = sk = 512
    mm = P.block_packed_mask_mod(sq, sk, 200)
    m = create_mask(mm, 1, 1, sq, sk, device="cpu")[0, 0]
    assert int(m.sum()) == W.block_packed_keys_total(sq, sk, 200)
    assert m.sum(-1).tolist() == W.block_packed_keys_per_row(sq, sk, 200)
    bm = P.build_block_mask(mm, 1, 1, sq, sk, "cpu")
    assert int(bm.kv_num_blocks.sum()) == 0          # no partial block: no mask evaluation


def test_dense_reference_and_masked_reference():
    g = torch.Generator().manual_seed(0)
    B, S, H, D = 2, 40, 4, 16
    shape = W.Shape(B, H, 2, S, S, D, "float32")
    q = torch.randn(B, S, H, D, generator=g)
    k, v = torch.randn(B, S, 2, D, generator=g), torch.randn(B, S, 2, D, generator=g)
    x = P.Inputs(q, k, v, torch.randn(B, S, 2, generator=g), D ** -0.5)
    spec = P.sample_spec(shape, 2, 2, 16)
    assert spec == (2, 2, 1, 24)
    from blackwell_sparsek import reference as ref
    o, _ = ref.attention_ref(q, k, v, True, D ** -0.5)
    got = P.dense_reference(x, True, spec, chunk=7)
    assert torch.allclose(got, o[:2, 24:, :2], atol=1e-5)
    masked = P.dense_reference(x, False, spec, chunk=5, mask_mod=P.causal_mask_mod(S, S))
    assert torch.allclose(masked, got, atol=1e-5)
    cmp = P.compare(o, got, spec)
    assert cmp["allclose"] and cmp["max_abs_err"] < 1e-5
    sref = P.sparsek_reference(x, S, 8, spec)   # k >= S: dense causal
    assert torch.allclose(sref, got, atol=1e-5)


def test_tolerance_per_dtype():
    # An output that is the float32 reference rounded to the dtype passes that dtype's check; the
    # same output with one element off by 4x the dtype's epsilon does not. bfloat16's rounding alone
    # fails the float16 bound (the 0.00708 error of every causal bfloat16 row, SDPA's included).
    g = torch.Generator().manual_seed(3)
    shape = W.Shape(2, 2, 2, 64, 64, 32, "float32")
    spec = P.sample_spec(shape, 2, 2, 64)
    ref = torch.randn(2, 64, 2, 32, generator=g) * 3
    for dtype, tdt in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        rtol, atol = R.tolerance(dtype)
        out = ref.to(tdt)
        assert P.compare(out, ref, spec, rtol=rtol, atol=atol)["allclose"]
        bad = out.float().clone()
        bad[1, 7, 1, 5] += 4 * torch.finfo(tdt).eps * (1 + bad[1, 7, 1, 5].abs())
        assert not P.compare(bad, ref, spec, rtol=rtol, atol=atol)["allclose"]
    assert not P.compare(ref.to(torch.bfloat16), ref, spec, *R.tolerance("float16"))["allclose"]
    with pytest.raises(ValueError, match="dtype"):
        R.tolerance("int8")


def test_sample_spec():
    assert P.sample_spec(SEED_SHAPE, 2, 2, 4096) == (2, 2, 2, 0)
    assert P.sample_spec(W.Shape(4, 96, 8, 16384, 16384, 128), 2, 2, 4096) == (2, 2, 1, 12288)
    assert P.sample_spec(W.Shape(1, 4, 2, 1, 512, 64), 2, 2, 4096) == (1, 2, 1, 0)


def test_guard_reports_the_fallback_instead_of_timing_it():
    import blackwell_sparsek as bsk
    q = torch.randn(1, 8, 2, 16)
    fn = P.guard_kernel(bsk, lambda: bsk.attention(q, q, q, causal=True))
    with pytest.raises(P.Unavailable) as e:
        fn()
    assert e.value.status in ("fallback", "not implemented")


def test_peer_availability_never_raises():
    av = P.peer_availability()
    assert set(av) == {"flex_attention", "xformers", "flash_attn_4"}
    for v in av.values():
        assert isinstance(v["importable"], bool)


# ---------------------------------------------------------------------------------------------
# Nsight Compute driver (parsing only)
# ---------------------------------------------------------------------------------------------

NCU_LONG = """==PROF== Connected to process 1234 (/usr/bin/python3)
profile driver: bsk_dense done
==PROF== Profiling "attention_fwd_sm90_kernel": 0%....50%....100% - 9 passes
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
"0","1234","python3","127.0.0.1","void bsk::sm90::attention_fwd_sm90_kernel<bsk::sm90::Traits<cutlass::half_t, 128>, bsk::sm90::DenseMode>(bsk::sm90::DenseMode<bsk::sm90::Traits<cutlass::half_t, 128>>::Params)","1","7","(384, 1, 1)","(32, 1536, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","msecond","25.41"
"0","1234","python3","127.0.0.1","void bsk::sm90::attention_fwd_sm90_kernel<bsk::sm90::Traits<cutlass::half_t, 128>, bsk::sm90::DenseMode>(bsk::sm90::DenseMode<bsk::sm90::Traits<cutlass::half_t, 128>>::Params)","1","7","(384, 1, 1)","(32, 1536, 1)","0","9.0","Command line profiler metrics","sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active","%","61.5"
"0","1234","python3","127.0.0.1","void bsk::sm90::attention_fwd_sm90_kernel<bsk::sm90::Traits<cutlass::half_t, 128>, bsk::sm90::DenseMode>(bsk::sm90::DenseMode<bsk::sm90::Traits<cutlass::half_t, 128>>::Params)","1","7","(384, 1, 1)","(32, 1536, 1)","0","9.0","Command line profiler metrics","dram__throughput.avg.pct_of_peak_sustained_elapsed","%","9.87"
"1","1234","python3","127.0.0.1","void bsk::kernels::(anonymous namespace)::select_smem_kernel(bsk::kernels::(anonymous namespace)::KArgs)","1","7","(256, 1, 1)","(1536, 1, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","usecond","1,234.5"
"1","1234","python3","127.0.0.1","void bsk::kernels::(anonymous namespace)::select_smem_kernel(bsk::kernels::(anonymous namespace)::KArgs)","1","7","(256, 1, 1)","(1536, 1, 1)","0","9.0","Command line profiler metrics","sm__warps_active.avg.pct_of_peak_sustained_active","%","45"
==PROF== Disconnected from process 1234
"""


def test_ncu_csv_parsing_and_markdown():
    rows = nsight.parse_ncu_csv(NCU_LONG)
    assert len(rows) == 5
    assert rows[3]["value"] == pytest.approx(1234.5)
    chosen = nsight.choose_metrics(None)
    launches = nsight.summarize(rows, chosen)
    assert [ln["name"] for ln in launches] == ["attention_fwd_sm90_kernel<DenseMode>",
                                              "select_smem_kernel"]
    assert launches[0]["values"]["tensor"] == pytest.approx(61.5)
    assert launches[1]["values"]["occupancy"] == pytest.approx(45)
    md = nsight.render_markdown(launches, chosen, dict(gpu="H100", command="ncu ..."))
    assert "Tensor Core Util (%)" in md and "Memory BW Util (%)" in md
    assert "achieved occupancy" in md
    assert "| 0 | attention_fwd_sm90_kernel<DenseMode> | 25.410 ms | 61.5 | 9.9 | — | — |" in md
    assert "| 1 | select_smem_kernel | 1.234 ms | — | — | 45.0 | — |" in md
    assert nsight.parse_ncu_csv("==PROF== nothing\n") == []


def test_ncu_wide_csv_and_metric_choice():
    wide = ('"ID","Kernel Name","gpu__time_duration.sum","sm__warps_active.avg.pct_of_peak_'
            'sustained_active"\n"","","nsecond","%"\n"0","k1","1000","50.5"\n"1","k2","2000",'
            '"20"\n')
    rows = nsight.parse_ncu_csv(wide)
    launches = nsight.summarize(rows, nsight.choose_metrics(None))
    assert [ln["name"] for ln in launches] == ["k1", "k2"]
    assert launches[0]["units"]["duration"] == "nsecond"
    assert launches[1]["values"]["occupancy"] == 20
    avail = nsight.parse_query_metrics(
        "Device gh100\nsm__pipe_tensor_op_hmma_cycles_active   Counter  # of cycles\n"
        "dram__throughput  Throughput  DRAM\nsm__warps_active Counter x\n")
    ch = nsight.choose_metrics(avail)
    assert ch["tensor"].startswith("sm__pipe_tensor_op_hmma_cycles_active.")
    assert ch["dram"].startswith("dram__throughput.")
    assert nsight.choose_metrics(set())["tensor"].startswith("sm__pipe_tensor_op_gmma")


def test_stdlib_profile_is_not_shadowed():
    code = ("import cProfile, profile, io, contextlib\n"
            "assert hasattr(profile, 'Profile') and hasattr(profile, 'run'), profile.__file__\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    cProfile.run('sum(range(3))')\n"
            "print('ok')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([BENCH, os.path.join(REPO, "python")]))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=BENCH, timeout=60)
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr


# ---------------------------------------------------------------------------------------------
# the script without a GPU
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_run_bench_without_gpu_exits_nonzero():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO, "python"), BENCH]))
    p = subprocess.run([sys.executable, os.path.join(BENCH, "run_bench.py")],
                       capture_output=True, text=True, env=env, timeout=120)
    # On failure the whole output, not pytest's shortened repr: the smoke check names each check
    # that failed on a "FAILED:" line of its own.
    out = f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert p.returncode == 2, out
    assert "no CUDA GPU" in p.stdout, out
    assert "FAILED:" not in p.stdout, out
    assert "CPU smoke check passed" in p.stdout, out


def test_dry_run_checks_correctness(tmp_path):
    # The CPU dry run (float32 inputs) goes through the same correctness check as a GPU run: every
    # row with a reference gets allclose, none a failed comparison (float32 once had no tolerance).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO, "python"), BENCH]))
    p = subprocess.run([sys.executable, os.path.join(BENCH, "run_bench.py"), "--_dry-run-cpu",
                        "--workloads", "seed/dense_causal", "--out-dir", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    (path,) = list(tmp_path.glob("*-dryrun.json"))
    rows = json.loads(path.read_text())["results"]
    assert not [r for r in rows if "compare failed" in str(r.get("check"))]
    assert any(r.get("allclose") is True for r in rows if r["impl"] == "sdpa_default")


def test_run_bench_args():
    import run_bench
    a = run_bench.parse_args([])
    assert (a.warmup, a.repeat, a.sweep, a.quick) == (3, 15, False, False)
    assert a.out_dir.endswith(os.path.join("bench", "results"))
    assert a.time_budget == 285.0
    assert run_bench.parse_args(["--sweep"]).time_budget == 570.0
    b = run_bench.parse_args(["--out-dir", "/x", "--workloads", "dense*", "--quick",
                              "--repeat", "0"])
    assert (b.out_dir, b.workloads, b.quick, b.repeat) == ("/x", "dense*", True, 1)


def test_preflight_child_runner_handles_crash_and_hang():
    import run_bench
    crash = ("import json, os, sys\n"
             "print(json.dumps({'start': 0}), flush=True)\n"
             "print(json.dumps({'done': 0, 'status': 'ok'}), flush=True)\n"
             "print(json.dumps({'start': 1}), flush=True)\n"
             "os._exit(139)\n")
    lines, err, rc, hung = run_bench._run_child([sys.executable, "-c", crash], 30, 30)
    assert rc == 139 and not hung and len(lines) == 3
    hang = ("import json, time\n"
            "print(json.dumps({'start': 0}), flush=True)\n"
            "time.sleep(60)\n")
    lines, err, rc, hung = run_bench._run_child([sys.executable, "-c", hang], 30, 1.0)
    assert hung and len(lines) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-kernel path")
def test_preflight_reports_rows_without_kernels():
    import run_bench
    ws = W.filter_workloads(W.build_workloads(quick=True), "tier_origin/*", "bsk_*")
    res = run_bench.run_preflight(ws, start_timeout=120, item_timeout=60)
    assert set(res) == {(w.id, i) for w in ws for i in w.impls}
    assert all(st == "kernel not built" for st, _ in res.values())

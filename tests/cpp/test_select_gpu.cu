// GPU tests of the SparseK selection kernel (bsk::kernels::sparsek_select) against the exact
// CPU reference bsk::ref::sparsek_operator and, for the per-tile unions, against the union of
// the reference selections. Outputs are poisoned (0xFF) before every launch. Skips cleanly
// without an sm_90 GPU. SelectGpu.SeedShapeTiming prints the time of the seed shape
// (B=16, Hkv=96, S=4096, k=256, window=256, tile 128, union on); it is not asserted.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "bsk/reference.h"
#include "kernels/kernels.h"

namespace {

bool have_sm90() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    return false;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return false;
  return prop.major == 9 && prop.minor == 0;
}

#define SKIP_WITHOUT_SM90() \
  if (!have_sm90()) GTEST_SKIP() << "needs an sm_90 GPU"

#define CUDA_OK(x) \
  ASSERT_EQ((x), cudaSuccess) << #x << ": " << cudaGetErrorString(cudaGetLastError())

template <class T>
struct DevBuf {
  T* p = nullptr;
  std::size_t n = 0;
  explicit DevBuf(std::size_t count) : n(count) {
    if (count) cudaMalloc(&p, count * sizeof(T));
  }
  ~DevBuf() {
    if (p) cudaFree(p);
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  void poison() {
    if (p) cudaMemset(p, 0xFF, n * sizeof(T));
  }
  std::vector<T> get() const {
    std::vector<T> h(n);
    if (n) cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
  }
};

enum class Dist { kNormal, kTies3, kTiesInt, kSlopeUp, kConst, kNonFinite, kSignedZero };

const char* dist_name(Dist d) {
  switch (d) {
    case Dist::kNormal:
      return "normal";
    case Dist::kTies3:
      return "ties3";
    case Dist::kTiesInt:
      return "ties_int";
    case Dist::kSlopeUp:
      return "slope_up";
    case Dist::kConst:
      return "const";
    case Dist::kNonFinite:
      return "nonfinite";
    case Dist::kSignedZero:
      return "signed_zero";
  }
  return "?";
}

// scores [B, Sk, Hkv] in a buffer whose head stride is 1 and seq stride is hkv + pad.
std::vector<float> make_scores(int64_t B, int64_t Sk, int64_t H, int64_t pad, Dist d,
                               std::mt19937_64& rng) {
  std::normal_distribution<float> nd(0.f, 1.f);
  std::uniform_int_distribution<int> pick3(0, 2);
  std::vector<float> u(static_cast<std::size_t>(B * Sk * (H + pad)), 1e30f);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const float slope = std::uniform_real_distribution<float>(0.001f, 0.5f)(rng);
      for (int64_t j = 0; j < Sk; ++j) {
        float x = 0.f;
        switch (d) {
          case Dist::kNormal:
            x = nd(rng);
            break;
          case Dist::kTies3: {
            const float v[3] = {-0.5f, 0.25f, 1.0f};
            x = v[pick3(rng)];
            break;
          }
          case Dist::kTiesInt:
            x = static_cast<float>(pick3(rng));
            break;
          case Dist::kSlopeUp:
            x = nd(rng) + slope * static_cast<float>(j);
            break;
          case Dist::kConst:
            x = 0.75f;
            break;
          case Dist::kNonFinite:
            x = nd(rng);
            break;
          case Dist::kSignedZero: {
            const float v[3] = {-0.0f, 0.0f, 1.0f};
            x = v[pick3(rng)];
            break;
          }
        }
        u[(b * Sk + j) * (H + pad) + h] = x;
      }
      if (d == Dist::kNonFinite && Sk > 0) {
        const float bad[3] = {std::numeric_limits<float>::quiet_NaN(),
                              std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity()};
        for (int c = 0; c < 2; ++c)
          u[(b * Sk + static_cast<int64_t>(rng() % Sk)) * (H + pad) + h] = bad[rng() % 3];
      }
    }
  return u;
}

struct Case {
  int64_t B, Sk, H, Sq, k, window;
  Dist dist;
  int tile_q = 128;
  int64_t pad = 0;
  bool with_union = true;
};

std::string name(const Case& c) {
  return "B=" + std::to_string(c.B) + " Sk=" + std::to_string(c.Sk) +
         " Hkv=" + std::to_string(c.H) + " Sq=" + std::to_string(c.Sq) +
         " k=" + std::to_string(c.k) + " window=" + std::to_string(c.window) +
         " tile_q=" + std::to_string(c.tile_q) + " pad=" + std::to_string(c.pad) +
         " dist=" + dist_name(c.dist);
}

struct Result {
  std::vector<float> tau, theta_val;
  std::vector<int32_t> theta_idx, n_active, uidx, ucnt, urows, uold;
  std::vector<float> uu;
  int64_t n_tiles = 0, cap = 0;
  float ms = 0;  // median time of one selection (timing runs only)
};

// Runs the kernel on u (layout as make_scores). timing_reps > 0: also time it.
Result run_kernel(const Case& c, const std::vector<float>& u, int timing_reps = 0) {
  Result r;
  DevBuf<float> du(u.size());
  cudaMemcpy(du.p, u.data(), u.size() * sizeof(float), cudaMemcpyHostToDevice);
  const std::size_t per_q = static_cast<std::size_t>(c.B * c.H * c.Sq);
  DevBuf<float> tau(per_q), tv(per_q);
  DevBuf<int32_t> ti(per_q), na(per_q);
  r.n_tiles = (c.Sq + c.tile_q - 1) / c.tile_q;
  r.cap = std::min<int64_t>(c.k + c.tile_q, c.Sk);
  const std::size_t tiles = static_cast<std::size_t>(c.B * c.H * r.n_tiles);
  DevBuf<int32_t> uidx(c.with_union ? tiles * static_cast<std::size_t>(r.cap) : 0);
  DevBuf<int32_t> ucnt(c.with_union ? tiles : 0);
  DevBuf<int32_t> uold(c.with_union ? tiles : 0);
  // Row counts and scores of the union keys: for 128-query tiles (the attention kernel's).
  const bool with_rows = c.with_union && c.tile_q == 128;
  DevBuf<int32_t> urows(with_rows ? tiles * static_cast<std::size_t>(r.cap) : 0);
  DevBuf<float> uu(with_rows ? tiles * static_cast<std::size_t>(r.cap) : 0);
  bsk::kernels::SelectParams p;
  p.scores = du.p;
  p.batch = c.B;
  p.seqlen_k = c.Sk;
  p.num_heads_kv = c.H;
  p.seqlen_q = c.Sq;
  p.score_stride[0] = c.Sk * (c.H + c.pad);
  p.score_stride[1] = c.H + c.pad;
  p.score_stride[2] = 1;
  p.k_select = c.k;
  p.window = c.window;
  p.tau = tau.p;
  p.theta_val = tv.p;
  p.theta_idx = ti.p;
  p.n_active = na.p;
  p.union_idx = c.with_union ? uidx.p : nullptr;
  p.union_cnt = c.with_union ? ucnt.p : nullptr;
  p.union_old = c.with_union ? uold.p : nullptr;
  p.union_rows = with_rows ? urows.p : nullptr;
  p.union_u = with_rows ? uu.p : nullptr;
  p.tile_q = c.tile_q;
  p.union_cap = r.cap;
  const std::size_t ws_bytes = bsk::kernels::select_workspace_bytes(p);
  DevBuf<unsigned char> ws(ws_bytes);
  p.workspace = ws.p;
  tau.poison();
  tv.poison();
  ti.poison();
  na.poison();
  uidx.poison();
  ucnt.poison();
  uold.poison();
  urows.poison();
  uu.poison();
  bsk::kernels::sparsek_select(p);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess) << name(c);
  if (timing_reps > 0) {
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    std::vector<float> times;
    for (int i = 0; i < timing_reps; ++i) {
      cudaEventRecord(e0);
      bsk::kernels::sparsek_select(p);
      cudaEventRecord(e1);
      cudaEventSynchronize(e1);
      float ms = 0;
      cudaEventElapsedTime(&ms, e0, e1);
      times.push_back(ms);
    }
    std::sort(times.begin(), times.end());
    r.ms = times[times.size() / 2];
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
  }
  r.tau = tau.get();
  r.theta_val = tv.get();
  r.theta_idx = ti.get();
  r.n_active = na.get();
  r.uidx = uidx.get();
  r.ucnt = ucnt.get();
  r.uold = uold.get();
  r.urows = urows.get();
  r.uu = uu.get();
  return r;
}

// Compares heads [h_from, h_to) of batch 0.. against the reference. Returns #mismatches.
int compare(const Case& c, const std::vector<float>& u, const Result& r) {
  int bad = 0;
  auto fail = [&](const std::string& s) {
    if (bad++ < 8) ADD_FAILURE() << name(c) << ": " << s;
  };
  // Dense double copy [B, Sk, Hkv] for the reference.
  std::vector<double> ud(static_cast<std::size_t>(c.B * c.Sk * c.H));
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t j = 0; j < c.Sk; ++j)
      for (int64_t h = 0; h < c.H; ++h)
        ud[(b * c.Sk + j) * c.H + h] = u[(b * c.Sk + j) * (c.H + c.pad) + h];
  std::vector<bsk::ref::SparseKQuery> info(static_cast<std::size_t>(c.B * c.H * c.Sq));
  bsk::ref::sparsek_operator(c.B, c.Sk, c.H, c.Sq, ud.data(), c.k, c.window, info.data());
  auto check_row = [&](int64_t bh, int64_t i) {
    const std::size_t at = static_cast<std::size_t>(bh * c.Sq + i);
    const auto& q = info[at];
    const std::string row = "bh=" + std::to_string(bh) + " row=" + std::to_string(i);
    const float tk = r.tau[at];
    if (std::isnan(q.tau)) {
      if (!std::isnan(tk)) fail(row + ": tau " + std::to_string(tk) + " vs NaN");
    } else if (std::isinf(q.tau)) {
      if (!(std::isinf(tk) && (tk < 0) == (q.tau < 0)))
        fail(row + ": tau " + std::to_string(tk) + " vs inf");
    } else if (!(std::fabs(tk - q.tau) <= 1e-6 * std::fabs(q.tau) + 1e-6)) {
      fail(row + ": tau " + std::to_string(tk) + " vs " + std::to_string(q.tau));
    }
    const float tv = r.theta_val[at];
    const bool tv_ok =
        std::isnan(q.theta_val) ? std::isnan(tv) : static_cast<double>(tv) == q.theta_val;
    if (!tv_ok)
      fail(row + ": theta_val " + std::to_string(tv) + " vs " + std::to_string(q.theta_val));
    if (r.theta_idx[at] != q.theta_idx)
      fail(row + ": theta_idx " + std::to_string(r.theta_idx[at]) + " vs " +
           std::to_string(q.theta_idx));
    if (r.n_active[at] != q.n_active)
      fail(row + ": n_active " + std::to_string(r.n_active[at]) + " vs " +
           std::to_string(q.n_active));
  };
  for (int64_t bh = 0; bh < c.B * c.H; ++bh) {
    const int64_t b = bh / c.H, h = bh % c.H;
    for (int64_t i = 0; i < c.Sq; ++i) check_row(bh, i);
    if (!c.with_union) continue;
    // Union of tile t = the keys selected by the reference's theta in some row of the tile:
    // j in C_p with (u_j, j) >= theta_p. NaN rows select nothing; theta = (-inf, -1) selects
    // every candidate (n_p <= k) and (+inf, -1) none (k = 0).
    const int64_t nt = r.n_tiles;
    // Whether query row i selects candidate j (j < n_cand of the row), by the reference.
    auto selects = [&](int64_t i, int64_t j) {
      const auto& q = info[static_cast<std::size_t>(bh * c.Sq + i)];
      const double x = ud[(b * c.Sk + j) * c.H + h];
      return !std::isnan(q.tau) &&
             (q.theta_idx < 0 ? q.theta_val < 0
                              : (x > q.theta_val || (x == q.theta_val && j >= q.theta_idx)));
    };
    std::vector<char> in(static_cast<std::size_t>(c.Sk));
    for (int64_t t = 0; t < nt; ++t) {
      std::fill(in.begin(), in.end(), 0);
      for (int64_t i = t * c.tile_q; i < std::min(c.Sq, (t + 1) * c.tile_q); ++i) {
        const int64_t n_cand = info[static_cast<std::size_t>(bh * c.Sq + i)].n_cand;
        for (int64_t j = 0; j < n_cand; ++j)
          if (selects(i, j)) in[j] = 1;
      }
      std::vector<int> want;
      for (int64_t j = 0; j < c.Sk; ++j)
        if (in[j]) want.push_back(static_cast<int>(j));
      const int32_t cnt = r.ucnt[bh * nt + t];
      std::vector<int> got;
      if (cnt >= 0 && cnt <= r.cap)
        got.assign(r.uidx.begin() + (bh * nt + t) * r.cap,
                   r.uidx.begin() + (bh * nt + t) * r.cap + cnt);
      if (got != want)
        fail("bh=" + std::to_string(bh) + " tile " + std::to_string(t) + ": union of " +
             std::to_string(cnt) + " keys vs " + std::to_string(want.size()));
      if (got != want) continue;
      // The leading union keys that are candidates of the tile's first row.
      const int64_t l0 = info[static_cast<std::size_t>(bh * c.Sq + t * c.tile_q)].n_cand;
      const int32_t want_old = static_cast<int32_t>(
          std::count_if(got.begin(), got.end(), [&](int j) { return j < l0; }));
      if (r.uold[bh * nt + t] != want_old)
        fail("bh=" + std::to_string(bh) + " tile " + std::to_string(t) + ": " +
             std::to_string(r.uold[bh * nt + t]) + " old union keys vs " +
             std::to_string(want_old));
      // What the attention kernel relies on: at most k of them, and the others inside the
      // first window tile [l0, l0 + tile_q - 1).
      if (want_old > c.k || (!got.empty() && got.back() >= l0 + c.tile_q - 1))
        fail("bh=" + std::to_string(bh) + " tile " + std::to_string(t) + ": " +
             std::to_string(want_old) + " old union keys, last key " + std::to_string(got.back()));
      if (r.urows.empty()) continue;
      // Per union key j: n_j, such that every row r of the tile with j among its candidates
      // selects j (by the reference) exactly when r < n_j; and its score (0 if not finite).
      for (std::size_t e = 0; e < got.size(); ++e) {
        const int j = got[e];
        const float x = u[(b * c.Sk + j) * (c.H + c.pad) + h];
        const std::size_t at = static_cast<std::size_t>((bh * nt + t) * r.cap) + e;
        const int nj = r.urows[at];
        if (nj < 0 || nj > 128) fail("key " + std::to_string(j) + ": rows " + std::to_string(nj));
        for (int64_t i = t * 128; i < std::min(c.Sq, (t + 1) * 128); ++i) {
          if (j >= info[static_cast<std::size_t>(bh * c.Sq + i)].n_cand) continue;
          const bool sel = selects(i, j);
          if (sel != (i - t * 128 < nj))
            fail("bh=" + std::to_string(bh) + " tile " + std::to_string(t) + " key " +
                 std::to_string(j) + ": row " + std::to_string(i) +
                 (sel ? " selects" : " rejects") + " it, rows " + std::to_string(nj));
        }
        const float wu = std::isfinite(x) ? x : 0.f;
        if (!(r.uu[at] == wu))
          fail("bh=" + std::to_string(bh) + " key " + std::to_string(j) + ": score " +
               std::to_string(r.uu[at]) + " vs " + std::to_string(wu));
      }
    }
  }
  return bad;
}

void run_case(const Case& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> u = make_scores(c.B, c.Sk, c.H, c.pad, c.dist, rng);
  Result r = run_kernel(c, u);
  EXPECT_EQ(compare(c, u, r), 0) << "seed " << seed;
}

TEST(SelectGpu, Cases) {
  SKIP_WITHOUT_SM90();
  std::vector<Case> cases;
  for (Dist d : {Dist::kNormal, Dist::kTies3, Dist::kTiesInt, Dist::kSlopeUp, Dist::kConst,
                 Dist::kNonFinite, Dist::kSignedZero}) {
    cases.push_back({2, 113, 3, 113, 7, 16, d, 16});
    cases.push_back({1, 1000, 2, 1000, 64, 100, d, 128});
    cases.push_back({1, 4097, 2, 4097, 256, 256, d, 128});
    cases.push_back({1, 3000, 2, 3000, 256, 256, d, 128});  // chunk table in global memory
  }
  for (int64_t S : {1, 2, 113, 1000, 4096, 4097}) {
    cases.push_back({1, S, 2, S, 0, 1, Dist::kNormal, 64});           // k = 0
    cases.push_back({1, S, 2, S, 1, 0, Dist::kNormal, 128});          // k = 1, no window
    cases.push_back({1, S, 1, S, S + 5, 3, Dist::kNormal, 128});      // k > S
    cases.push_back({1, S, 1, S, 3, S + 3, Dist::kNormal, 128});      // window > S
    cases.push_back({1, S, 3, 1, 5, 2, Dist::kNormal, 128});          // decode: Sq = 1
    cases.push_back({1, S, 2, (S + 1) / 2, 9, 0, Dist::kTies3, 32});  // chunked prefill
  }
  cases.push_back({2, 2000, 3, 2000, 100, 50, Dist::kNormal, 128, 5});  // padded seq stride
  cases.push_back({1, 8000, 2, 8000, 512, 1024, Dist::kNormal, 128});
  cases.push_back({1, 16384, 1, 16384, 256, 256, Dist::kSlopeUp, 128});
  cases.push_back({1, 3000, 2, 3000, 200, 0, Dist::kNormal, 128, 0, false});  // no union
  uint64_t seed = 1;
  for (const auto& c : cases) run_case(c, seed++);
}

// Sk beyond shared memory: segmented sort in the workspace, global-memory sweeps.
TEST(SelectGpu, LargeSGlobalPath) {
  SKIP_WITHOUT_SM90();
  run_case({1, 20000, 2, 20000, 256, 256, Dist::kNormal, 128}, 101);
  run_case({2, 40000, 1, 700, 1024, 64, Dist::kTies3, 128}, 102);
  run_case({1, 20001, 1, 5000, 3, 0, Dist::kNonFinite, 64}, 103);
  run_case({1, 20000, 2, 20000, 256, 256, Dist::kSlopeUp, 128}, 104);
  run_case({1, 17000, 1, 17000, 100, 30, Dist::kTiesInt, 128}, 105);
  run_case({1, 16500, 1, 16500, 16000, 0, Dist::kNormal, 128}, 106);  // few computed rows
}

// The seed shape: time printed; correctness checked on a few heads with the same data.
TEST(SelectGpu, SeedShapeTiming) {
  SKIP_WITHOUT_SM90();
  Case c{16, 4096, 96, 4096, 256, 256, Dist::kNormal, 128};
  std::mt19937_64 rng(7);
  std::vector<float> u = make_scores(c.B, c.Sk, c.H, 0, c.dist, rng);
  Result r = run_kernel(c, u, 20);
  std::printf(
      "[ SelectGpu ] seed shape B=16 Hkv=96 S=4096 k=256 window=256 tile_q=128 union: "
      "%.1f us (median of 20)\n",
      r.ms * 1e3);
  c.with_union = false;
  Result r2 = run_kernel(c, u, 20);
  std::printf("[ SelectGpu ] same without the union: %.1f us\n", r2.ms * 1e3);
  // Check batch 0, heads 0..1 by re-running the kernel on just those heads (same data).
  Case small{1, 4096, 2, 4096, 256, 256, Dist::kNormal, 128};
  std::vector<float> us(static_cast<std::size_t>(4096 * 2));
  for (int64_t j = 0; j < 4096; ++j)
    for (int64_t h = 0; h < 2; ++h) us[j * 2 + h] = u[j * 96 + h];
  Result rs = run_kernel(small, us);
  EXPECT_EQ(compare(small, us, rs), 0);
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t i = 0; i < 4096; ++i) {
      ASSERT_EQ(r.theta_idx[h * 4096 + i], rs.theta_idx[h * 4096 + i]);
      ASSERT_EQ(r.tau[h * 4096 + i], rs.tau[h * 4096 + i]);
    }
}

}  // namespace

// Sweep simulator for the SparseK selection (a development tool, CPU only): runs the selection
// core's chunk starts and ticks exactly as the kernel does (sparsek_select_core.h, the glue of
// tests/cpp/select_host.h) and prints, per chunk-cut model (sc::chunk_cost: the default is the
// linear log with w = 4), the ticks of the slowest chunk, the
// mean chunk, and the mean over warps of each warp's slowest lane. A kernel's sweep lasts as long
// as its slowest chunk (the 32 lanes of a warp tick in step, and the CTA waits at a barrier for
// its last warp), so max / mean is what an imbalanced cut costs. Tick counts are properties of the
// algorithm and the data, the same on the GPU (SelectGpu's BSK_SELECT_PROFILE build prints warp
// 0's); the cycles per tick are not.
//
//   bsk_select_sim [n] [chunks] [wdlog] [heads] [k] [window] [slope]
// Scores: randn + slope * j (the benchmark's slope is 1 / n; pass 0 for plain randn).
// It then prints the same for chunks walked upwards by the walk of sparsek_select_walk.h (the
// design of the removed kernel variant, on the kernel's cut) at 32, 64 and 128 chunks: a warp's
// lanes start in step (the ticks from the start to the first row), then walk: "lockstep steps"
// when every iteration takes one row and its whole solve (the sum over iterations of 1 + the
// slowest lane's solve steps), "flat steps" when an iteration is one row or one solve step (as
// the variant walked; the lane with the most).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "bsk/kernels/sm90/sparsek_select_core.h"
#include "bsk/kernels/sm90/sparsek_select_walk.h"
#include "select_host.h"

namespace sc = bsk::select_core;
using bsk_select_host::build_table;
using bsk_select_host::HostKeys;
using bsk_select_host::row_of;
using bsk_select_host::sort_keys;

namespace {

struct Stats {
  double max = 0, mean = 0, warp_max = 0;
  // Exact evaluations of f per chunk start: init_lane's bisection over [theta's rank, n), the
  // same over [theta's rank, start_bad_bound), init_lane_falsi.
  double evals_bisect = 0, evals_bracket = 0, evals_newton = 0;
  // The same, as the mean over warps of each warp's largest count: the lanes of a warp run their
  // starts in step, so a warp's start phase lasts as long as its slowest lane's search.
  double wmax_bisect = 0, wmax_newton = 0;
};

// One head, cut with sc::chunk_cost(weight, cubic).
Stats simulate(const std::vector<float>& u, int64_t k, int64_t window, int chunks, int wdlog,
               int64_t weight, bool cubic) {
  const int n = static_cast<int>(u.size());
  const bsk_select_host::Sorted s = sort_keys(u);
  const HostKeys keys = s.keys();
  sc::RowPlan p = sc::make_plan(n, n, k, window, s.fnf);
  p.cost_weight = weight;
  p.cost_cubic = cubic;
  std::vector<int64_t> bound(chunks + 1);
  const int used = sc::chunk_bounds(p, chunks, bound.data());
  Stats st;
  if (used == 0) return st;
  const bsk_select_host::Table t = build_table(keys, bound.data(), used, wdlog);
  std::vector<long> ticks(used);
  std::vector<int> ev_b(used), ev_n(used);
  for (int c = 0; c < used; ++c) {
    sc::Lane ln, ln2;
    sc::init_lane(keys, row_of(t, c), static_cast<int>(bound[c]),
                  static_cast<int>(bound[c + 1]) + 1, k, s.fx.one, ln);
    int ev = 0;
    sc::init_lane_falsi(keys, row_of(t, c), static_cast<int>(bound[c]),
                        static_cast<int>(bound[c + 1]) + 1, k, s.fx.one, ln2, &ev);
    if (ln2.st.p1.p != ln.st.p1.p || ln2.st.p3.p != ln.st.p3.p || ln2.st.tn != ln.st.tn) {
      std::fprintf(stderr, "regula falsi start differs at chunk %d\n", c);
      std::exit(1);
    }
    st.evals_newton += ev;
    ev_n[c] = ev;
    for (int w = n - ln.st.th.p; w > 1; w = (w + 1) / 2) ++ev_b[c];
    st.evals_bisect += ev_b[c];
    const int bb = sc::start_bad_bound(keys, ln.st.th.p, static_cast<int>(bound[c]), s.fx.one);
    for (int w = bb - ln.st.th.p; w > 1; w = (w + 1) / 2) st.evals_bracket += 1;
    long count = 0;
    while (!ln.done) {
      sc::tick(
          keys, ln, k, s.fx, [](int, const sc::RowOut&) {}, [](int, int) {});
      ++count;
    }
    ticks[c] = count;
  }
  const int warps = (used + 31) / 32;
  for (int w = 0; w < warps; ++w)
    st.warp_max +=
        *std::max_element(ticks.begin() + 32 * w, ticks.begin() + std::min(used, 32 * w + 32));
  st.warp_max /= warps;
  for (int w = 0; w < warps; ++w) {
    const int a = 32 * w, b = std::min(used, 32 * w + 32);
    st.wmax_bisect += *std::max_element(ev_b.begin() + a, ev_b.begin() + b);
    st.wmax_newton += *std::max_element(ev_n.begin() + a, ev_n.begin() + b);
  }
  st.wmax_bisect /= warps;
  st.wmax_newton /= warps;
  st.max = static_cast<double>(*std::max_element(ticks.begin(), ticks.end()));
  for (long x : ticks) st.mean += static_cast<double>(x);
  st.mean /= used;
  st.evals_newton /= used;
  st.evals_bisect /= used;
  st.evals_bracket /= used;
  return st;
}

// The walked chunks of one head (the kernel's cut): per warp, the lockstep cost of the starts'
// ticks and of the walk; returns {mean over warps of the slowest lane's start ticks, of the
// lockstep walk steps, of the rows per lane}.
struct WalkStats {
  double start_ticks = 0, lockstep = 0, rows = 0, flat = 0;
};
WalkStats simulate_walk(const std::vector<float>& u, int64_t k, int64_t window, int chunks,
                        int wdlog) {
  const int n = static_cast<int>(u.size());
  const bsk_select_host::Sorted s = sort_keys(u);
  const HostKeys keys = s.keys();
  const sc::RowPlan p = sc::make_plan(n, n, k, window, s.fnf);
  std::vector<int64_t> bound(chunks + 1);
  const int used = sc::chunk_bounds(p, chunks, bound.data());
  WalkStats ws;
  if (used == 0) return ws;
  std::vector<int64_t> wb(used + 1);
  for (int c = 0; c < used; ++c) wb[c] = bound[c + 1] + 1;
  wb[used] = wb[used - 1] - 1;
  const bsk_select_host::Table t = build_table(keys, wb.data(), used, wdlog);
  // Per chunk: start ticks, then the breakpoints crossed at each of its rows.
  std::vector<long> ticks(used);
  std::vector<std::vector<int>> cross(used);
  for (int c = 0; c < used; ++c) {
    sc::Lane ln;
    const int lo = static_cast<int>(wb[c]), hi = static_cast<int>(bound[c]);
    sc::init_lane_falsi(keys, row_of(t, c), lo, lo, k, s.fx.one, ln);
    while (!sc::row_ready(keys, ln, s.fx.one)) {
      sc::tick(
          keys, ln, k, s.fx, [](int, const sc::RowOut&) {}, [](int, int) {});
      ++ticks[c];
    }
    std::vector<uint32_t> mask((n + 31) / 32, 0u);
    for (int j = 0; j < lo; ++j) mask[keys.pos(j) >> 5] |= 1u << (keys.pos(j) & 31);
    sc::WalkState st;
    sc::walk_from_sweep(keys, mask.data(), ln.st, k, s.fx, st);
    // cross[c][i]: the solve steps after row i's key entered (0 if T stays; else the
    // breakpoints crossed + the step that finds tau).
    for (int L = lo; L < hi; ++L) {
      const int before = st.steps;
      const bool moved = sc::walk_enter(keys, mask.data(), k, s.fx, st, [](int, int) {});
      if (moved) sc::walk_solve(keys, mask.data(), k, s.fx, st);
      cross[c].push_back(moved ? st.steps - before + 1 : 0);
    }
    cross[c].push_back(0);  // the top row (then at most the departure-only entry)
  }
  const int warps = (used + 31) / 32;
  for (int w = 0; w < warps; ++w) {
    const int a = 32 * w, b = std::min(used, 32 * w + 32);
    long tmax = 0;
    size_t rmax = 0;
    for (int c = a; c < b; ++c) {
      tmax = std::max(tmax, ticks[c]);
      rmax = std::max(rmax, cross[c].size());
    }
    // A flat walk (one row or one solve step per iteration, as the kernel variant does) lasts as
    // long as the lane with the most rows + steps.
    long fmax = 0;
    for (int c = a; c < b; ++c) {
      long e = static_cast<long>(cross[c].size());
      for (int x : cross[c]) e += x;
      fmax = std::max(fmax, e);
    }
    ws.flat += static_cast<double>(fmax) / warps;
    long lock = 0;
    for (size_t i = 0; i < rmax; ++i) {
      int m = 0;
      for (int c = a; c < b; ++c)
        if (i < cross[c].size()) m = std::max(m, cross[c][i]);
      lock += 1 + m;
    }
    ws.start_ticks += static_cast<double>(tmax) / warps;
    ws.lockstep += static_cast<double>(lock) / warps;
    ws.rows += static_cast<double>(rmax) / warps;
  }
  return ws;
}

}  // namespace

int main(int argc, char** argv) {
  auto arg = [&](int i, double dflt) { return argc > i ? std::atof(argv[i]) : dflt; };
  const int n = static_cast<int>(arg(1, 4096));
  const int chunks = static_cast<int>(arg(2, 128));
  const int wdlog = static_cast<int>(arg(3, 7));
  const int heads = static_cast<int>(arg(4, 8));
  const int64_t k = static_cast<int64_t>(arg(5, 256));
  const int64_t window = static_cast<int64_t>(arg(6, 256));
  const double slope = arg(7, 1.0 / n);
  std::printf("n=%d chunks=%d wdlog=%d heads=%d k=%lld window=%lld slope=%g\n", n, chunks, wdlog,
              heads, static_cast<long long>(k), static_cast<long long>(window), slope);
  std::printf("%-22s %12s %12s %16s\n", "cut", "max ticks", "mean ticks", "mean warp max");
  struct Model {
    int64_t weight;
    bool cubic;
  };
  for (const Model m :
       {Model{4, false}, Model{4, true}, Model{5, true}, Model{6, true}, Model{8, true}}) {
    std::mt19937_64 rng(1);  // the same heads for every model
    std::normal_distribution<float> nd;
    Stats sum;
    for (int h = 0; h < heads; ++h) {
      std::vector<float> u(static_cast<size_t>(n));
      for (int j = 0; j < n; ++j) u[j] = nd(rng) + static_cast<float>(slope * j);
      const Stats st = simulate(u, k, window, chunks, wdlog, m.weight, m.cubic);
      sum.max += st.max / heads;
      sum.mean += st.mean / heads;
      sum.warp_max += st.warp_max / heads;
      sum.evals_bisect += st.evals_bisect / heads;
      sum.evals_newton += st.evals_newton / heads;
      sum.evals_bracket += st.evals_bracket / heads;
      sum.wmax_bisect += st.wmax_bisect / heads;
      sum.wmax_newton += st.wmax_newton / heads;
    }
    char name[40];
    std::snprintf(name, sizeof name, "%s log, %lld k ln L", m.cubic ? "cubic" : "linear",
                  static_cast<long long>(m.weight));
    std::printf("%-22s %12.1f %12.1f %16.1f\n", name, sum.max, sum.mean, sum.warp_max);
    if (m.weight == 4 && !m.cubic)
      std::printf(
          "  chunk starts, exact evaluations of f: %.2f bisection (init_lane), %.2f bisection "
          "in [theta, start_bad_bound), %.2f regula falsi (init_lane_falsi); per warp, its "
          "slowest lane: %.2f bisection, %.2f regula falsi\n",
          sum.evals_bisect, sum.evals_bracket, sum.evals_newton, sum.wmax_bisect, sum.wmax_newton);
  }
  std::printf("walked chunks (kernel cut): %-8s %18s %14s %16s\n", "chunks", "start ticks/warp",
              "rows/lane", "lockstep steps");
  for (const int wc : {32, 64, 128}) {
    std::mt19937_64 rng(1);
    std::normal_distribution<float> nd;
    WalkStats sum;
    for (int h = 0; h < heads; ++h) {
      std::vector<float> u(static_cast<size_t>(n));
      for (int j = 0; j < n; ++j) u[j] = nd(rng) + static_cast<float>(slope * j);
      const WalkStats ws = simulate_walk(u, k, window, wc, wdlog);
      sum.start_ticks += ws.start_ticks / heads;
      sum.rows += ws.rows / heads;
      sum.lockstep += ws.lockstep / heads;
      sum.flat += ws.flat / heads;
    }
    std::printf("                            %-8d %18.1f %14.1f %16.1f %12.1f\n", wc,
                sum.start_ticks, sum.rows, sum.lockstep, sum.flat);
  }
  return 0;
}

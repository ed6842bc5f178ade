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
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "bsk/kernels/sm90/sparsek_select_core.h"
#include "select_host.h"

namespace sc = bsk::select_core;
using bsk_select_host::build_table;
using bsk_select_host::HostKeys;
using bsk_select_host::row_of;
using bsk_select_host::sort_keys;

namespace {

struct Stats {
  double max = 0, mean = 0, warp_max = 0;
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
  for (int c = 0; c < used; ++c) {
    sc::Lane ln;
    sc::init_lane(keys, row_of(t, c), static_cast<int>(bound[c]),
                  static_cast<int>(bound[c + 1]) + 1, k, s.fx.one, ln);
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
  st.max = static_cast<double>(*std::max_element(ticks.begin(), ticks.end()));
  for (long x : ticks) st.mean += static_cast<double>(x);
  st.mean /= used;
  return st;
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
    }
    char name[40];
    std::snprintf(name, sizeof name, "%s log, %lld k ln L", m.cubic ? "cubic" : "linear",
                  static_cast<long long>(m.weight));
    std::printf("%-22s %12.1f %12.1f %16.1f\n", name, sum.max, sum.mean, sum.warp_max);
  }
  return 0;
}

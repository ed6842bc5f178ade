// SparseK selection: a row-ascending walk over one head's prefix lengths with an explicit
// bitmask of the entered keys. The kernel does not use it: a kernel variant built on it (32
// chunks walked upwards, one alive bitmask each) passed the GPU selection tests but measured
// slower than the default downward sweep (sparsek_select_core.h) on an H200: select kernel
// 2.34 ms vs 1.83 ms at B16 Hkv96 S4096 k256, 2.36 ms with 64 chunks (docs/kernel_notes.md v48).
// It is kept, CPU-tested against the core's from-scratch rows (tests/cpp/test_select_core.cpp,
// SelectWalk.*), as an exact alternative formulation.
//
// Same definitions as the core (sorted ranks, (u, j) descending; 64-bit fixed-point values;
// T = tn / (td * one)). Going up in L only adds keys, so T only rises and every key changes
// class at most twice (saturated -> active -> dead). The classes are kept for the piece of f
// just above T:
//   saturated (v > T + one): the entered ranks < s;
//   active (T < v <= T + one): the entered ranks in [s, a) (v == T + one counts here: it is
//     active just above T, though not in n_active at T);
//   dead (v <= T): the entered ranks >= a.
// s and a are 1 + the largest entered rank of their class (or the class below's bound), so the
// next breakpoints above T are at the keys of ranks a - 1 (it dies) and s - 1 (it leaves
// saturation), found by a backward bit scan. Only finite prefixes (L <= the first non-finite
// index) may be walked.
#pragma once

#include <cstdint>

#include "bsk/kernels/sm90/sparsek_select_core.h"

namespace bsk::select_core {

// Largest set rank <= r in mask (-1 if none); smallest set rank >= r (n if none).
BSK_SEL_HD int prev_set(const uint32_t* mask, int r) {
  if (r < 0) return -1;
  int w = r >> 5;
  uint32_t m = mask[w] & ((r & 31) == 31 ? ~0u : ((2u << (r & 31)) - 1u));
  while (m == 0) {
    if (--w < 0) return -1;
    m = mask[w];
  }
  return (w << 5) + bit_width64(m) - 1;
}
BSK_SEL_HD int next_set(const uint32_t* mask, int r, int n) {
  if (r >= n) return n;
  int w = r >> 5;
  uint32_t m = mask[w] & (~0u << (r & 31));
  while (m == 0) {
    if ((++w << 5) >= n) return n;
    m = mask[w];
  }
  const int p = (w << 5) + ctz32(m);
  return p < n ? p : n;
}

struct WalkState {
  int L = 0;           // prefix length: the keys idx < L are entered
  int s = 0, a = 0;    // class bounds (above)
  int ns = 0, na = 0;  // saturated and active counts
  int64_t sa = 0;      // sum of the active values
  int64_t tn = 0, td = 1;
  int th = -1;    // rank of theta (the k-th entered rank); -1 when k == 0
  int steps = 0;  // breakpoints crossed (statistics)
};

// Moves the keys at T's breakpoints into the classes of the piece above T (f is unchanged).
template <class K>
BSK_SEL_HD void walk_normalize(const K& keys, const uint32_t* mask, const Fixed& fx,
                               WalkState& st) {
  const int64_t one = fx.one;
  while (st.a > st.s && keys.v(st.a - 1) * st.td <= st.tn) {  // dies
    const int r = st.a - 1;
    st.na--;
    st.sa -= keys.v(r);
    const int p = prev_set(mask, r - 1);
    st.a = p + 1 > st.s ? p + 1 : st.s;
  }
  while (st.s > 0 && keys.v(st.s - 1) * st.td <= st.tn + one * st.td) {  // leaves saturation
    const int r = st.s - 1;
    st.ns--;
    st.na++;
    st.sa += keys.v(r);
    st.s = prev_set(mask, r - 1) + 1;
  }
}

// One step of raising T to tau of the current prefix (f(T) >= k): the keys at T's breakpoints
// move to their classes above T, then T becomes tau (returns true) or crosses the next
// breakpoint. A kernel's lanes take one step per iteration, as the core's ticks do.
template <class K>
BSK_SEL_HD bool walk_solve_step(const K& keys, const uint32_t* mask, int64_t k, const Fixed& fx,
                                WalkState& st) {
  const int64_t one = fx.one;
  walk_normalize(keys, mask, fx, st);
  if (st.na == 0 && st.ns <= k) return true;  // f flat at k from T on: tau = T
  const bool hd = st.na > 0, hs = st.ns > 0;
  const int64_t bd = hd ? keys.v(st.a - 1) : 0;
  const int64_t bs = hs ? keys.v(st.s - 1) - one : 0;
  const int64_t b = hd && hs ? (bd < bs ? bd : bs) : (hd ? bd : bs);
  if (hd) {
    const int64_t nn = (static_cast<int64_t>(st.ns) - k) * one + st.sa;
    if (nn <= b * st.na) {  // the root of this piece: tau
      st.tn = nn;
      st.td = st.na;
      walk_normalize(keys, mask, fx, st);
      return true;
    }
  }
  st.tn = b;  // cross the breakpoint
  st.td = 1;
  st.steps++;
  return false;
}

// Raises T to tau of the current prefix (f(T) >= k on entry).
template <class K>
BSK_SEL_HD void walk_solve(const K& keys, const uint32_t* mask, int64_t k, const Fixed& fx,
                           WalkState& st) {
  while (!walk_solve_step(keys, mask, k, fx, st)) {
  }
}

// The state at prefix length L0 (> k), mask holding exactly the keys idx < L0: from T below every
// breakpoint (all entered keys saturated), walked up to tau. O(L0) steps: for tests and for a
// chunk's start until a cheaper one exists.
template <class K>
BSK_SEL_HD void walk_start(const K& keys, const uint32_t* mask, int L0, int64_t k, const Fixed& fx,
                           WalkState& st) {
  st = WalkState();
  st.L = L0;
  const int top = prev_set(mask, keys.n - 1);  // the smallest entered value
  st.s = st.a = top + 1;
  st.ns = L0;
  st.tn = keys.v(top) - fx.one - 1;  // td = 1
  if (k > 0) {
    int r = -1;
    for (int64_t i = 0; i < k; ++i) r = next_set(mask, r + 1, keys.n);
    st.th = r;
  }
  walk_solve(keys, mask, k, fx, st);
}

// The walk's state from the core's sweep state at its row (row_ready: T = tau), mask holding the
// keys idx < st.L. This is how a chunk would start from the core's table-based start (init_lane
// / init_lane_falsi, then the ticks to its first row) instead of walk_start's O(L) walk. The core
// keeps keys at exactly T apart (ne, ranks [p2, p3)) and counts v == T + 1 as saturated; the walk
// counts the first as dead and the second as active (the piece above T).
template <class K>
BSK_SEL_HD void walk_from_sweep(const K& keys, const uint32_t* mask, const SweepState& sw,
                                int64_t k, const Fixed& fx, WalkState& st) {
  st = WalkState();
  st.L = sw.L;
  st.tn = sw.tn;
  st.td = sw.td;
  st.th = k > 0 ? sw.th.p : -1;
  st.ns = sw.ns;
  st.na = sw.na;
  st.sa = sw.sa;
  st.s = prev_set(mask, sw.p1.p - 1) + 1;          // saturated: the entered ranks < p1
  const int pa = prev_set(mask, sw.p2.p - 1) + 1;  // v > T: the entered ranks < p2
  st.a = pa > st.s ? pa : st.s;
  walk_normalize(keys, mask, fx, st);  // v == T + 1: saturated -> active
}

// Enters key st.L (sets its bit in mask) and moves to prefix length st.L + 1, without raising T:
// returns whether T must rise (walk_solve). on_leave(r, L): the key at rank r stops being
// selected after prefix length L (theta passed it).
template <class K, class OnLeave>
BSK_SEL_HD bool walk_enter(const K& keys, uint32_t* mask, int64_t k, const Fixed& fx, WalkState& st,
                           OnLeave&& on_leave) {
  const int64_t one = fx.one;
  const int r = keys.pos(st.L);
  mask[r >> 5] |= 1u << (r & 31);
  const int64_t v = keys.v(r);
  bool moved = false;
  if (v * st.td > st.tn + one * st.td) {
    st.ns++;
    if (r + 1 > st.s) st.s = r + 1;
    if (r + 1 > st.a) st.a = r + 1;
    moved = true;
  } else if (v * st.td > st.tn) {
    st.na++;
    st.sa += v;
    if (r + 1 > st.a) st.a = r + 1;
    moved = true;
  }
  if (k > 0 && r < st.th) {
    on_leave(st.th, st.L);
    st.th = prev_set(mask, st.th - 1);
  }
  st.L++;
  return moved;
}

// Adds key st.L and raises T to the new prefix's tau.
template <class K, class OnLeave>
BSK_SEL_HD void walk_add(const K& keys, uint32_t* mask, int64_t k, const Fixed& fx, WalkState& st,
                         OnLeave&& on_leave) {
  if (walk_enter(keys, mask, k, fx, st, on_leave)) walk_solve(keys, mask, k, fx, st);
}

// The row of the current prefix length (the core's RowOut, bit for bit the same values).
// n_active counts T < v < T + one: the active keys at exactly T + one (the smallest ranks of the
// active class) are left out.
template <class K>
BSK_SEL_HD RowOut walk_row(const K& keys, const uint32_t* mask, const WalkState& st, int64_t k,
                           const Fixed& fx) {
  int na = st.na;
  for (int r = next_set(mask, st.s, st.a); r < st.a; r = next_set(mask, r + 1, st.a)) {
    if (keys.v(r) * st.td != st.tn + fx.one * st.td) break;
    na--;
  }
  return make_row(keys, st.tn, st.td, st.th, na, k, fx);
}

// One chunk of a kernel sweep walked upwards: the rows L = lo .. hi (emit(L, RowOut)), started
// from the core's table-based start at lo (table row t is for L = lo; mask holds the keys
// idx < lo and is updated), with on_leave(r, L) for every key that theta's set loses after L.
// With more_above (a chunk starts at hi + 1), key hi is entered once more without a row, so the
// key that leaves between the two chunks is seen too. th_top: theta's rank at hi (the top
// chunk's selection at the last computed row is what the caller marks from it).
template <class K, class CntT, class Emit, class OnLeave>
BSK_SEL_HD void run_chunk_walk(const K& keys, uint32_t* mask, const TableRow<CntT>& t, int lo,
                               int hi, bool more_above, int64_t k, const Fixed& fx, Emit&& emit,
                               OnLeave&& on_leave, int& th_top) {
  Lane ln;
  init_lane_falsi(keys, t, lo, lo, k, fx.one, ln);
  while (!row_ready(keys, ln, fx.one))
    tick(
        keys, ln, k, fx, [](int, const RowOut&) {}, [](int, int) {});
  WalkState st;
  walk_from_sweep(keys, mask, ln.st, k, fx, st);
  for (;;) {
    emit(st.L, walk_row(keys, mask, st, k, fx));
    if (st.L >= hi) break;
    walk_add(keys, mask, k, fx, st, on_leave);
  }
  th_top = st.th;
  if (more_above) walk_enter(keys, mask, k, fx, st, on_leave);  // its departure only
}

}  // namespace bsk::select_core

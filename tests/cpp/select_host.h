// Host-side pieces of the selection kernel's glue (sorted keys, the per-chunk prefix table) for
// the CPU tests of the selection core (test_select_core.cpp) and the sweep simulator
// (tools/select_sweep_sim.cpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "bsk/kernels/sm90/sparsek_select_core.h"

namespace bsk_select_host {

namespace sc = bsk::select_core;

// The keys as the kernel's accessor presents them (float values, converted on access).
struct HostKeys {
  int n = 0;
  const float* val = nullptr;
  const int* ix = nullptr;
  const int* ps = nullptr;
  sc::Fixed fx;
  int64_t v(int r) const { return sc::to_fixed(val[r], fx); }
  int idx(int r) const { return ix[r]; }
  int pos(int j) const { return ps[j]; }
  float fval(int r) const { return val[r]; }
  // The indices as u16 halfword pairs padded to whole 32-rank words (u16_words), as the
  // shared-memory kernel keeps them; nullptr where that kernel would not (n > 16384). The alive
  // masks are then taken the way that kernel takes them (sc::below_mask_u16).
  const uint32_t* ix16 = nullptr;
  uint32_t alive_mask(int w, int L) const {
    return ix16 != nullptr ? alive_mask_u16(w, L) : alive_mask_compare(w, L);
  }
  uint32_t alive_mask_compare(int w, int L) const {
    uint32_t m = 0;
    for (int b = 0; b < 32 && 32 * w + b < n; ++b)
      if (ix[32 * w + b] < L) m |= 1u << b;
    return m;
  }
  uint32_t alive_mask_u16(int w, int L) const {  // needs ix16
    uint32_t h[16];
    for (int i = 0; i < 16; ++i) h[i] = ix16[16 * w + i];
    return sc::below_mask_u16(h, static_cast<uint32_t>(L));
  }
};

// The same keys with tick's cursor moves as selects (sc::cursor_select), as the shared-memory
// kernel's accessor asks for them.
struct HostKeysCursorSelect : HostKeys {
  static constexpr bool kCursorSelect = true;
};

// idx as the shared-memory kernel's u16 indices: halfword pairs, the ranks from n to the last
// whole 32-rank word holding 0x7fff (above every L, so never alive).
inline std::vector<uint32_t> u16_words(const std::vector<int>& idx) {
  const int n = static_cast<int>(idx.size());
  const int np = (n + 31) & ~31;
  std::vector<uint32_t> words(np / 2, 0u);
  for (int r = 0; r < np; ++r) {
    const uint32_t x = r < n ? static_cast<uint32_t>(idx[r]) : 0x7fffu;
    words[r / 2] |= x << (16 * (r & 1));
  }
  return words;
}

struct Sorted {
  std::vector<float> val;
  std::vector<int> idx, pos;
  std::vector<uint32_t> idx16;  // u16_words(idx) where the kernel would use them
  int64_t fnf = 0;
  sc::Fixed fx;
  HostKeys keys() const {
    HostKeys k;
    k.n = static_cast<int>(val.size());
    k.val = val.data();
    k.ix = idx.data();
    k.ps = pos.data();
    k.fx = fx;
    k.ix16 = idx16.empty() ? nullptr : idx16.data();
    return k;
  }
};

inline Sorted sort_keys(const std::vector<float>& u) {
  const int n = static_cast<int>(u.size());
  Sorted s;
  std::vector<std::pair<uint32_t, int>> kv(n);
  uint32_t maxabs = 0;
  s.fnf = n;
  for (int j = 0; j < n; ++j) {
    kv[j] = {sc::sort_key(u[j]), j};
    uint32_t b = sc::float_bits(u[j]);
    if (sc::finite_bits(b))
      maxabs = std::max(maxabs, b & 0x7fffffffu);
    else if (s.fnf == n)
      s.fnf = j;
  }
  std::sort(kv.begin(), kv.end(), [](auto a, auto b) {
    if (a.first != b.first) return a.first > b.first;
    return a.second > b.second;
  });
  s.val.resize(n);
  s.idx.resize(n);
  s.pos.resize(n);
  for (int r = 0; r < n; ++r) {
    s.val[r] = sc::key_value(kv[r].first);
    s.idx[r] = kv[r].second;
    s.pos[kv[r].second] = r;
  }
  s.fx = sc::make_fixed(maxabs, n);
  if (n <= 16384) s.idx16 = u16_words(s.idx);  // the kernel's kMaxSmemN
  return s;
}

// Per-chunk prefix table as the kernel builds it: row c, entry w - 1 = stats of ranks
// [0, w << wdlog) for alive = idx < chunk_hi(c), w = 1..nw-1.
struct Table {
  int wdlog = 0, nw = 0;
  std::vector<int32_t> cnt;
  std::vector<int64_t> sum;
};

inline Table build_table(const HostKeys& keys, const int64_t* bound, int used, int wdlog) {
  Table t;
  t.wdlog = wdlog;
  t.nw = (keys.n + (1 << wdlog) - 1) >> wdlog;
  const int stride = std::max(t.nw - 1, 1);
  t.cnt.assign(static_cast<size_t>(used) * stride, 0);
  t.sum.assign(static_cast<size_t>(used) * stride, 0);
  // Difference form exactly as the kernel: key r adds to (alive_chunks - 1, word) and the
  // suffix over chunks then the prefix over words give the table.
  std::vector<int32_t> dc(static_cast<size_t>(used) * (t.nw + 1), 0);
  std::vector<int64_t> ds(dc.size(), 0);
  for (int r = 0; r < keys.n; ++r) {
    int m = sc::alive_chunks(bound, used, keys.idx(r));
    if (m == 0) continue;
    size_t at = static_cast<size_t>(m - 1) * (t.nw + 1) + (r >> wdlog);
    dc[at] += 1;
    ds[at] += keys.v(r);
  }
  for (int w = 0; w < t.nw; ++w)
    for (int c = used - 2; c >= 0; --c) {
      dc[c * (t.nw + 1) + w] += dc[(c + 1) * (t.nw + 1) + w];
      ds[c * (t.nw + 1) + w] += ds[(c + 1) * (t.nw + 1) + w];
    }
  for (int c = 0; c < used; ++c) {
    int32_t ac = 0;
    int64_t as = 0;
    for (int w = 1; w < t.nw; ++w) {
      ac += dc[c * (t.nw + 1) + w - 1];
      as += ds[c * (t.nw + 1) + w - 1];
      t.cnt[c * stride + w - 1] = ac;
      t.sum[c * stride + w - 1] = as;
    }
  }
  return t;
}

inline sc::TableRow<int32_t> row_of(const Table& t, int c) {
  const int stride = std::max(t.nw - 1, 1);
  sc::TableRow<int32_t> r;
  r.cnt = t.cnt.data() + c * stride;
  r.sum = t.sum.data() + c * stride;
  r.wdlog = t.wdlog;
  r.nw = t.nw;
  return r;
}

}  // namespace bsk_select_host

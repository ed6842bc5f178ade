// Development aid: with -DBSK_ATTN_PROFILE (CMake option BSK_ATTN_PROFILE) the attention kernel
// adds up, per CTA, the SM cycles one thread of each warp spends in each phase of its loop
// (waits, GEMM waits, softmax, epilogue, ...), copies them to g_phase_clock at its end, and the
// launcher prints them from a separate kernel (a printf call inside the attention kernel makes
// ptxas serialise every WGMMA). scripts/attn_phases.py runs and summarises it. Without the macro
// every call compiles to nothing.
#pragma once

#include <cstdio>

namespace bsk::sm90 {

#if defined(BSK_ATTN_PROFILE)
inline constexpr bool kPhaseClock = true;
#else
inline constexpr bool kPhaseClock = false;
#endif
inline constexpr int kPhaseSlots = 18;
inline constexpr int kPhaseWarps = 4;  // per warpgroup (role: producer, consumer 1, consumer 2)
inline constexpr int kPhaseMaxCtas = 1024;

#if defined(BSK_ATTN_PROFILE)
static __device__ unsigned g_phase_clock[kPhaseMaxCtas][3][kPhaseWarps][kPhaseSlots];

static __global__ void phase_clock_print(int ctas) {
  for (int c = 0; c < ctas && c < kPhaseMaxCtas; ++c)
    for (int r = 0; r < 3; ++r)
      for (int w = 0; w < kPhaseWarps; ++w) {
        const unsigned* v = g_phase_clock[c][r][w];
        printf("BSKPROF %d %d %d %u %u %u %u %u %u %u %u %u %u %u %u %u %u %u %u %u %u\n", c, r, w,
               v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12],
               v[13], v[14], v[15], v[16], v[17]);
      }
}
#endif

struct PhaseClock {
  unsigned* acc = nullptr;  // kPhaseSlots counters in shared memory (this warp's)
  unsigned t = 0;
  bool on = false;
  __device__ void init(unsigned* a, bool record) {
    if constexpr (kPhaseClock) {
      acc = a;
      on = record;
      if (on)
        for (int i = 0; i < kPhaseSlots; ++i) acc[i] = 0;
      t = clock();
    }
  }
  // Charges the cycles since the previous lap to slot k.
  __device__ void lap(int k) {
    if constexpr (kPhaseClock) {
      const unsigned n = clock();
      if (on) acc[k] += n - t;
      t = n;
    }
  }
  __device__ void count(int k, unsigned by = 1) {
    if constexpr (kPhaseClock) {
      if (on) acc[k] += by;
    }
  }
};

}  // namespace bsk::sm90

// Development aid: with -DBSK_ATTN_PROFILE (CMake option BSK_ATTN_PROFILE) the attention kernel
// adds up, per CTA, the SM cycles one thread of each warpgroup spends in each phase of its loop
// (waits, GEMM waits, softmax, epilogue, ...) and prints them at its end; scripts/attn_phases.py
// runs and summarises it. Without the macro every call compiles to nothing.
#pragma once

namespace bsk::sm90 {

#if defined(BSK_ATTN_PROFILE)
inline constexpr bool kPhaseClock = true;
#else
inline constexpr bool kPhaseClock = false;
#endif
inline constexpr int kPhaseSlots = 12;

struct PhaseClock {
  unsigned* acc = nullptr;  // kPhaseSlots counters in shared memory (this warpgroup's)
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

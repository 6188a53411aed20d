// Paired Replacement — the no-packing sparse FFN: a SwiGLU (or ReLU) FFN computed straight from the
// rows of the active neurons, wherever those rows are (the cache's pools, or the packed block).
//
// Header-only, C++17, standard library only (plus weight_cache.hpp, for SerialFor and
// detail::checked_mul). The PyTorch binding exposes it as torch.ops.paired.row_ffn.
//
// ---------------------------------------------------------------------------------------------
// What it computes
//   Rows use the cache's layout. A "concat" row is the gate row (H values) followed by the up row
//   (H values) when has_gate, else just the up row (H values); a "down" row is a row of down^T
//   (down is [H, N]), H values. Row r of each kind starts r * ld elements after the first one, so
//   rows may be padded (ld >= their length) or even overlap (only read). Given x [b, H] and the
//   selected rows S (a list of row ids, or all rows 0..count-1),
//       y[j, :] = sum over r in S of act_r(x_j) * down_r[:]
//       act_r(x) = silu(<gate_r, x>) * <up_r, x>     with a gate,   silu(z) = z / (1 + exp(-z))
//                = max(<up_r, x>, 0)                 without,
//   which is the packed FFN y = (silu(x W_gate^T) * (x W_up^T)) D^T restricted to S. A row listed
//   twice counts twice (S is a multiset), exactly like the packed FFN over a block that holds the
//   row in two slots.
//
// How
//   The selected rows are split into `tasks` contiguous slices; each task accumulates its slice
//   into its own float accumulator [b, H] in the caller's scratch, then the accumulators are summed
//   into y (in parallel over the columns when there is enough to sum). Each selected row is read
//   from memory once, for all b tokens (the kernel is memory-bound at small b): the gate|up row
//   and the down row are converted to float once (a per-task row buffer; float rows are used in
//   place), and the b dot products and the b axpys then read the row from L1/L2.
//
// Invariants / guarantees
//   R1  Accumulation is in float. The dot products use kRowFfnLanes independent partial sums
//       (summed pairwise at the end in a fixed order), so gcc -O3 vectorizes them without
//       -ffast-math; y is deterministic for a given (input, tasks), whatever the thread schedule.
//   R2  No heap allocation: the caller passes `scratch` (row_ffn_scratch_floats floats).
//   R3  All validation happens before any output or scratch is written; a call that throws has
//       written nothing. The compute bodies are noexcept.
// ---------------------------------------------------------------------------------------------
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "paired_replacement/weight_cache.hpp"

namespace paired_replacement {

// ---- Tuning constants ------------------------------------------------------------------------
// Independent partial sums per dot product: 16 floats = two AVX2 vectors or one AVX-512 vector.
// The loop is memory-bound: 32 and 64 lanes measured no faster (one core, fp32, H = 4096). Power
// of two (the lanes are summed pairwise).
inline constexpr std::int64_t kRowFfnLanes = 16;
// A task is worth starting only if it reads at least this many bytes of rows (an OpenMP region
// costs a few microseconds; 256 KiB take tens of microseconds to stream). >= 1.
inline constexpr std::int64_t kRowFfnMinTaskBytes = std::int64_t{256} << 10;
// Before a task reads a row, it prefetches one cache line every this many bytes of the task's
// next row (concat and down). With 4 KiB pages this starts the TLB walk and the first DRAM access
// of every page of the next row early; the hardware prefetchers, which stop at page boundaries,
// do the rest. Measured on one core (AMD EPYC, fp32, H = 4096, 2048 random rows of 8192): ~20%
// faster on random pool rows; line-by-line prefetching (64) was slower. 0 disables. >= 0.
inline constexpr std::int64_t kRowFfnPrefetchStrideBytes = 4096;
// Each parallel reduction chunk sums at least this many floats (all accumulators together). >= 1.
inline constexpr std::int64_t kRowFfnMinReduceFloats = std::int64_t{1} << 15;
// Scratch regions start on multiples of this many floats (64 bytes: a cache line), so a 64-byte
// aligned scratch gives 64-byte aligned regions. >= 1.
inline constexpr std::int64_t kRowFfnScratchAlignFloats = 16;

static_assert(kRowFfnLanes >= 1 && (kRowFfnLanes & (kRowFfnLanes - 1)) == 0,
              "kRowFfnLanes must be a power of two");

// ---- Element conversions (for a caller's ToFloat) ---------------------------------------------
// IEEE binary16 bits -> float. Exact for every input (subnormals, infinities, NaNs) and
// branch-free, so a loop of it vectorizes; a scalar F16C conversion per element does not. The
// method of Marat Dukhan's FP16 library (also c10's portable path).
inline float half_bits_to_float(std::uint16_t h) noexcept {
  const auto from_bits = [](std::uint32_t u) noexcept {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  };
  const std::uint32_t w = static_cast<std::uint32_t>(h) << 16;
  const std::uint32_t sign = w & 0x80000000u;
  const std::uint32_t two_w = w + w;  // exponent and mantissa, sign shifted out
  // Normal numbers, infinities and NaNs: shift exponent and mantissa into place, bias the exponent
  // by 0xE0 (so that 0x1F becomes 0xFF), then scale by 2^-112 to undo the excess over 0x70.
  const float normalized = from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  // Subnormals: the mantissa as the low bits of 0.5f's representation, minus 0.5f (exact).
  const float denormalized = from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
  std::uint32_t n = 0, d = 0;
  std::memcpy(&n, &normalized, sizeof n);
  std::memcpy(&d, &denormalized, sizeof d);
  return from_bits(sign | (two_w < (1u << 27) ? d : n));
}

// bfloat16 bits -> float (exact: a bfloat16 is the top half of a float).
inline float bfloat16_bits_to_float(std::uint16_t b) noexcept {
  const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

namespace detail {

// n rounded up to a multiple of kRowFfnScratchAlignFloats; false when it does not fit.
inline bool row_ffn_round_up(std::size_t n, std::size_t& out) noexcept {
  constexpr auto a = static_cast<std::size_t>(kRowFfnScratchAlignFloats);
  if (n > std::numeric_limits<std::size_t>::max() - (a - 1)) return false;
  out = (n + a - 1) / a * a;
  return true;
}

// Where each region of the scratch starts, in floats. x_float and row_buffers are empty when the
// element type is float (x and the rows are then read in place).
struct RowFfnLayout {
  std::size_t x_float = 0;      // [b, H] float copy of x
  std::size_t accumulators = 0; // tasks x [b, H] (rounded), only when tasks > 1
  std::size_t acc_stride = 0;   // floats between two accumulators
  std::size_t row_buffers = 0;  // tasks x (concat row + down row) in float (rounded)
  std::size_t buf_stride = 0;   // floats between two row buffers
  std::size_t down_offset = 0;  // down row's offset inside a row buffer
  std::size_t total = 0;
};

// Throws std::invalid_argument when the sizes are negative, tasks < 1 or the layout overflows.
template <class T>
RowFfnLayout row_ffn_layout(std::int64_t batch, std::int64_t hidden, bool has_gate,
                            std::int64_t tasks) {
  if (batch < 0 || hidden < 0)
    throw std::invalid_argument("row_ffn: batch and hidden must be >= 0, got batch = " +
                                std::to_string(batch) + ", hidden = " + std::to_string(hidden));
  if (tasks < 1)
    throw std::invalid_argument("row_ffn: tasks must be >= 1, got " + std::to_string(tasks));
  constexpr bool kConvert = !std::is_same_v<T, float>;
  const auto b = static_cast<std::size_t>(batch), h = static_cast<std::size_t>(hidden);
  const auto t = static_cast<std::size_t>(tasks);
  std::size_t bh = 0, cols = 0, concat_r = 0, down_r = 0, accs = 0, bufs = 0;
  bool ok = checked_mul(b, h, bh) && row_ffn_round_up(bh, bh) &&
            checked_mul(h, has_gate ? 2 : 1, cols) && row_ffn_round_up(cols, concat_r) &&
            row_ffn_round_up(h, down_r) && (t == 1 || checked_mul(t, bh, accs)) &&
            (!kConvert || checked_mul(t, concat_r + down_r, bufs));
  RowFfnLayout l;
  l.x_float = 0;
  l.accumulators = kConvert ? bh : 0;
  l.acc_stride = bh;
  ok = ok && accs <= std::numeric_limits<std::size_t>::max() - l.accumulators;
  l.row_buffers = l.accumulators + accs;
  l.buf_stride = concat_r + down_r;
  l.down_offset = concat_r;
  ok = ok && bufs <= std::numeric_limits<std::size_t>::max() - l.row_buffers;
  if (!ok) throw std::invalid_argument("row_ffn: scratch size overflows size_t");
  l.total = l.row_buffers + bufs;
  return l;
}

// Sum of a[k] * b[k] for k < n, in float, over kRowFfnLanes independent partial sums that are
// added pairwise at the end (a fixed order: the result does not depend on alignment).
inline float dot_lanes(const float* a, const float* b, std::int64_t n) noexcept {
  float s[kRowFfnLanes] = {};
  std::int64_t k = 0;
  for (; k + kRowFfnLanes <= n; k += kRowFfnLanes)
    for (std::int64_t l = 0; l < kRowFfnLanes; ++l) s[l] += a[k + l] * b[k + l];
  for (std::int64_t l = 0; k + l < n; ++l) s[l] += a[k + l] * b[k + l];
  for (std::int64_t w = kRowFfnLanes / 2; w >= 1; w /= 2)
    for (std::int64_t l = 0; l < w; ++l) s[l] += s[l + w];
  return s[0];
}

// y[k] += a * d[k] for k < n. y and d do not overlap.
inline void axpy(float* y, float a, const float* d, std::int64_t n) noexcept {
  for (std::int64_t k = 0; k < n; ++k) y[k] += a * d[k];
}

inline float silu(float z) noexcept { return z / (1.0f + std::exp(-z)); }

// The activation of one row for one token: silu(<gate, x>) * <up, x>, or max(<up, x>, 0).
inline float row_activation(const float* concat_row, const float* xj, std::int64_t hidden,
                            bool has_gate) noexcept {
  if (has_gate)
    return silu(dot_lanes(concat_row, xj, hidden)) * dot_lanes(concat_row + hidden, xj, hidden);
  const float u = dot_lanes(concat_row, xj, hidden);
  return u > 0.0f ? u : 0.0f;
}

// Touches one line every kRowFfnPrefetchStrideBytes of [p, p + bytes) (a hint: no fault, no
// effect on results; a no-op on compilers without __builtin_prefetch).
inline void prefetch_pages(const void* p, std::int64_t bytes) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  if constexpr (kRowFfnPrefetchStrideBytes > 0) {
    const char* c = static_cast<const char*>(p);
    for (std::int64_t o = 0; o < bytes; o += kRowFfnPrefetchStrideBytes) __builtin_prefetch(c + o);
  }
#else
  (void)p;
  (void)bytes;
#endif
}

template <class T, class ToFloat>
void convert_row(float* dst, const T* src, std::int64_t n, const ToFloat& to_float) noexcept {
  for (std::int64_t k = 0; k < n; ++k) dst[k] = to_float(src[k]);
}

// Everything one slice needs; read-only, shared by all tasks.
template <class T, class ToFloat>
struct RowFfnProblem {
  const float* xf;  // [b, H] float
  std::int64_t batch, hidden;
  const T* concat;
  std::int64_t concat_ld;
  const T* down;
  std::int64_t down_ld;
  const std::int64_t* row_ids;  // null: rows 0..count-1
  std::int64_t count;
  bool has_gate;
  std::int64_t tasks;
  const ToFloat* to_float;
};

// acc[b, H] = sum over the selected rows i in [begin, end) of act_r(x_j) * down_r (acc is
// overwritten, so running a slice twice gives the same result). row_buf: the concat row
// (rounded up) then the down row in float; unused when T is float.
template <class T, class ToFloat>
void ffn_slice(const RowFfnProblem<T, ToFloat>& p, std::int64_t begin, std::int64_t end,
               float* acc, float* row_buf, std::size_t down_offset) noexcept {
  const std::int64_t h = p.hidden;
  const std::int64_t cols = p.has_gate ? 2 * h : h;
  std::fill(acc, acc + p.batch * h, 0.0f);
  const auto row_of = [&p](std::int64_t i) { return p.row_ids ? p.row_ids[i] : i; };
  const auto elem = static_cast<std::int64_t>(sizeof(T));
  for (std::int64_t i = begin; i < end; ++i) {
    const std::int64_t r = row_of(i);
    const T* c_src = p.concat + r * p.concat_ld;
    const T* d_src = p.down + r * p.down_ld;
    if (i + 1 < end) {
      const std::int64_t next = row_of(i + 1);
      prefetch_pages(p.concat + next * p.concat_ld, cols * elem);
      prefetch_pages(p.down + next * p.down_ld, h * elem);
    }
    const float* c = nullptr;
    const float* d = nullptr;
    if constexpr (std::is_same_v<T, float>) {
      c = c_src;
      d = d_src;
    } else {
      convert_row(row_buf, c_src, cols, *p.to_float);
      convert_row(row_buf + down_offset, d_src, h, *p.to_float);
      c = row_buf;
      d = row_buf + down_offset;
    }
    for (std::int64_t j = 0; j < p.batch; ++j) {
      const float a = row_activation(c, p.xf + j * h, h, p.has_gate);
      axpy(acc + j * h, a, d, h);
    }
  }
}

}  // namespace detail

// Floats of scratch row_ffn<T> needs for (batch, hidden, has_gate, tasks): a float copy of x when
// T is not float, `tasks` accumulators [batch, hidden] when tasks > 1, and one float row buffer per
// task when T is not float. Throws std::invalid_argument when batch or hidden < 0, tasks < 1, or
// the size does not fit in size_t.
template <class T>
std::size_t row_ffn_scratch_floats(std::int64_t batch, std::int64_t hidden, bool has_gate,
                                   std::int64_t tasks) {
  return detail::row_ffn_layout<T>(batch, hidden, has_gate, tasks).total;
}

// How many tasks to split `count` rows of `row_bytes` bytes each (concat row + down row) into,
// given `threads` workers: at most `threads`, at most one per kRowFfnMinTaskBytes of rows, at
// least 1. Never throws; non-positive arguments give 1.
inline std::int64_t row_ffn_tasks(std::int64_t count, std::int64_t row_bytes,
                                  std::int64_t threads) noexcept {
  if (count <= 0 || row_bytes <= 0 || threads <= 1) return 1;
  const std::int64_t rows_per_task = std::max<std::int64_t>(
      1, (kRowFfnMinTaskBytes + row_bytes - 1) / row_bytes);
  return std::max<std::int64_t>(1, std::min(threads, count / rows_per_task));
}

// y[b, H] (row-major, float) = the FFN of x over the selected rows (see the top of this file).
//
//   x          [batch, hidden] elements of T, row-major (contiguous).
//   concat     row r at concat + r * concat_ld (elements), hidden * (has_gate ? 2 : 1) values:
//              gate then up, or up alone.
//   down       row r at down + r * down_ld (elements), hidden values (a row of down^T).
//   num_rows   rows available in concat and down (R); every selected id must be in [0, R).
//   row_ids    `count` row ids (duplicates allowed: they count twice), or null for rows
//              0..count-1 (then count <= R).
//   y          batch * hidden floats, overwritten. Must not overlap x, the rows or scratch.
//   scratch    row_ffn_scratch_floats<T>(batch, hidden, has_gate, tasks) floats (best 64-byte
//              aligned); contents on return are unspecified.
//   tasks      >= 1 slices of the selected rows (see row_ffn_tasks); y depends on it only through
//              float rounding (R1).
//   to_float   float to_float(const T&), noexcept in effect; not called when T is float (rows and
//              x are then read in place).
//   parallel_for  same contract as the cache's: parallel_for(begin, end, grain, body) calls
//              body(b, e) on disjoint ranges covering [begin, end), possibly on several threads,
//              and returns (or throws) only after every body call it started has returned. If it
//              throws, the work is redone on the calling thread (every body is idempotent).
//
// Throws std::invalid_argument for negative sizes or strides, tasks < 1, a null pointer that
// would be read or written, or count > R without row_ids; std::out_of_range for an id outside
// [0, R). Nothing is written before these checks pass (R3). Cost: reads each selected row once
// (count * (concat + down row) elements) plus O(b * H * tasks) for the reduction.
template <class T, class ToFloat, class ParallelFor = SerialFor>
void row_ffn(const T* x, std::int64_t batch, std::int64_t hidden, const T* concat,
             std::int64_t concat_ld, const T* down, std::int64_t down_ld, std::int64_t num_rows,
             const std::int64_t* row_ids, std::int64_t count, bool has_gate, float* y,
             float* scratch, std::int64_t tasks, const ToFloat& to_float,
             const ParallelFor& parallel_for = ParallelFor{}) {
  const detail::RowFfnLayout layout = detail::row_ffn_layout<T>(batch, hidden, has_gate, tasks);
  if (concat_ld < 0 || down_ld < 0 || num_rows < 0 || count < 0)
    throw std::invalid_argument("row_ffn: concat_ld, down_ld, num_rows and count must be >= 0");
  const std::int64_t bh = batch * hidden;
  if (bh > 0 && (x == nullptr || y == nullptr))
    throw std::invalid_argument("row_ffn: x and y must not be null");
  if (layout.total > 0 && scratch == nullptr)
    throw std::invalid_argument("row_ffn: scratch must not be null (it needs " +
                                std::to_string(layout.total) + " floats)");
  if (count > 0 && (concat == nullptr || down == nullptr))
    throw std::invalid_argument("row_ffn: concat and down must not be null");
  if (row_ids == nullptr) {
    if (count > num_rows)
      throw std::invalid_argument("row_ffn: count = " + std::to_string(count) +
                                  " rows selected without row_ids, but only " +
                                  std::to_string(num_rows) + " rows exist");
  } else {
    for (std::int64_t i = 0; i < count; ++i)
      if (row_ids[i] < 0 || row_ids[i] >= num_rows)
        throw std::out_of_range("row_ffn: row_ids[" + std::to_string(i) + "] = " +
                                std::to_string(row_ids[i]) + " is out of range [0, " +
                                std::to_string(num_rows) + ")");
  }
  if (bh == 0) return;

  const float* xf = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    xf = x;
  } else {
    float* xc = scratch + layout.x_float;
    detail::convert_row(xc, x, bh, to_float);
    xf = xc;
  }
  const detail::RowFfnProblem<T, ToFloat> p{xf,      batch,   hidden, concat,   concat_ld, down,
                                            down_ld, row_ids, count,  has_gate, tasks,     &to_float};

  // Slices t_begin..t_end-1 of the selected rows (contiguous, sizes differing by at most one),
  // each into y when there is a single task, else into its own accumulator.
  const auto slices = [&p, &layout, scratch, y](std::int64_t t_begin, std::int64_t t_end) noexcept {
    for (std::int64_t t = t_begin; t < t_end; ++t) {
      const auto ut = static_cast<std::size_t>(t);
      float* acc = p.tasks == 1 ? y : scratch + layout.accumulators + ut * layout.acc_stride;
      float* buf =
          scratch == nullptr ? nullptr : scratch + layout.row_buffers + ut * layout.buf_stride;
      // Slice k starts at q * k + min(k, rem): the first `rem` slices get one extra row, and
      // nothing overflows (count * k could).
      const std::int64_t q = p.count / p.tasks, rem = p.count % p.tasks;
      const auto start = [q, rem](std::int64_t k) { return q * k + std::min(k, rem); };
      detail::ffn_slice(p, start(t), start(t + 1), acc, buf, layout.down_offset);
    }
  };
  if (tasks == 1) {
    slices(0, 1);
    return;
  }
  try {
    parallel_for(std::int64_t{0}, tasks, std::int64_t{1}, slices);
  } catch (...) {
    slices(0, tasks);  // see the ParallelFor contract: every slice overwrites its accumulator
  }

  // y = acc_0 + ... + acc_{tasks-1}, column chunks in parallel (idempotent, like the slices).
  const float* accs = scratch + layout.accumulators;
  const std::size_t stride = layout.acc_stride;
  const auto reduce = [=](std::int64_t c_begin, std::int64_t c_end) noexcept {
    for (std::int64_t j = 0; j < batch; ++j) {
      const auto off = static_cast<std::size_t>(j * hidden);
      float* out = y + off;
      std::copy(accs + off + static_cast<std::size_t>(c_begin),
                accs + off + static_cast<std::size_t>(c_end), out + c_begin);
      for (std::int64_t t = 1; t < tasks; ++t) {
        const float* a = accs + static_cast<std::size_t>(t) * stride + off;
        for (std::int64_t c = c_begin; c < c_end; ++c) out[c] += a[c];
      }
    }
  };
  const std::int64_t grain =
      std::max<std::int64_t>(1, kRowFfnMinReduceFloats / std::max<std::int64_t>(1, batch * tasks));
  try {
    parallel_for(std::int64_t{0}, hidden, grain, reduce);
  } catch (...) {
    reduce(0, hidden);
  }
}

}  // namespace paired_replacement

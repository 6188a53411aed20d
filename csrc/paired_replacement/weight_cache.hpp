// Paired Replacement — a differential cache of the active rows of a dynamic-sparse FFN.
//
// Header-only, C++17, no dependency beyond the standard library (x86 intrinsics are used when the
// target has them). The PyTorch binding in csrc/binding/ is a thin layer over this file.
//
// ---------------------------------------------------------------------------------------------
// What it does
//   N neurons; each token activates m of them. The cache keeps, for the active rows, the rows of
//   gate [N, G] and up [N, U] interleaved in one packed buffer ([m, G+U], gate columns first) and
//   the rows of down^T (down is [H, N]; its columns are stored as rows [N, H]) in a second packed
//   buffer, contiguous in slots [0, m). When the mask changes by A additions and R removals, only
//   the slots that must change are rewritten:
//     - holes  = slots in the new prefix [0, m') that do not hold a kept row: the old slots of
//                removed rows that lie below m', plus the growth slots [m, m') when m' > m;
//     - fillers= the added rows, plus the kept rows stranded in the tail [m', m) when m' < m.
//   Every hole receives exactly one filler, so an update writes W = #holes = max(A, h) rows per
//   buffer, h = #removed rows whose old slot is < m'. No packed layout can write fewer: each hole
//   must change its content and each written slot fills one hole. W <= max(A, R) (the seed's
//   count). Fillers are read from the pools, never from the packed block, so the W copies are
//   independent and run in parallel.
//
// Invariants (hold between public calls; checked by check_invariants(), and after every update
// when PAIRED_REPLACEMENT_DEBUG is defined):
//   I1  0 <= m <= N; m == popcount(mask).
//   I2  row_at[0, m) is a permutation of the active rows; slot_of[row_at[s]] == s for s < m.
//   I3  slot_of[r] == -1 exactly for the inactive rows.
//   I4  packed row s (both buffers, all ld bytes including padding) equals pool row row_at[s].
//   I5  pools and packed buffers are kAlignBytes-aligned; every row stride (ld) is the same for
//       pool and packed buffer of one kind; padding bytes are zero.
//   I6  no public member function allocates after construction except the ones documented to;
//       the update paths use only scratch arrays sized N at construction.
//   I7  a call that throws leaves the cache exactly as it was (strong guarantee): all validation
//       happens before the first write, and nothing after it can throw (the update paths are
//       noexcept; an executor that throws is recovered from by copying serially). The one
//       exception is a RowSource (a pool in a slower tier) that cannot read a row: the update
//       then resets the cache to no active row and rethrows (see update_from_mask).
//   I4 is also what catches a caller who wrote into a packed view: the cache never reads the
//   packed block, so such a write persists until the slot is rewritten, and check_invariants()
//   reports the slot.
//
// The pool rows are the cache's own copy in memory, or come from a RowSource (a slower tier such
// as a file read with direct I/O, file_pool.hpp): the bookkeeping is the same, only the row
// copies go through the source, which is given exactly the (slot, row) pairs to fill.
//
// W is the write count of the paired path. When an update would write more than tau * m' rows
// (the hybrid rule, tau = hybrid_tau_frac), the cache instead rebuilds the whole prefix: it writes
// m' rows per buffer, in ascending row order.
//
// Slot assignment is deterministic (the NumPy reference in src/paired_replacement/reference.py
// follows the same rules, slot for slot): holes are taken in the order of the removed list
// (ascending row id for mask updates, caller order for index updates), then growth slots
// ascending; fillers are the added list in the same order, then stranded tail rows by ascending
// slot. A rebuild places the active rows in ascending row id.
// ---------------------------------------------------------------------------------------------
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

// x86 intrinsics where available; PAIRED_REPLACEMENT_NO_SIMD forces the portable path (the one
// ARM64 and other targets take), so that path is tested on x86 too.
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(PAIRED_REPLACEMENT_NO_SIMD)
#include <immintrin.h>
#define PAIRED_REPLACEMENT_X86 1
#endif

// POSIX hosts map large packed buffers straight from the kernel (see kLazyCommitMinBytes).
#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#define PAIRED_REPLACEMENT_MMAP 1
#endif

// Debug builds check the invariants inside the update paths, which are noexcept: a violation
// prints where it happened and aborts, like assert().
#ifdef PAIRED_REPLACEMENT_DEBUG
#define PAIRED_REPLACEMENT_ASSERT(cond)                                                          \
  do {                                                                                           \
    if (!(cond)) {                                                                               \
      std::fprintf(stderr, "paired_replacement invariant violated: %s (%s:%d)\n", #cond, __FILE__, \
                   __LINE__);                                                                    \
      std::abort();                                                                              \
    }                                                                                            \
  } while (0)
#else
#define PAIRED_REPLACEMENT_ASSERT(cond) ((void)0)
#endif

namespace paired_replacement {

// ---- Tuning constants ------------------------------------------------------------------------
// Alignment of pools and packed buffers. Power of two, >= 64 (one cache line, one AVX-512 vector).
inline constexpr std::size_t kAlignBytes = 64;
// Rows at least this long get their stride rounded up to a multiple of kAlignBytes, so that every
// row starts on a cache line and copies are whole aligned vectors. Shorter rows are left unpadded:
// padding them would waste more bandwidth than alignment saves. Multiple of kAlignBytes.
inline constexpr std::size_t kPadMinRowBytes = 512;
// An update that writes at least this many bytes uses non-temporal stores (x86 only): the block is
// larger than the caches, so write-allocate would only evict useful lines. >= 0.
inline constexpr std::size_t kStreamingMinBytes = std::size_t{8} << 20;
// Packed buffers of at least this many bytes are anonymous mappings whose pages the kernel commits
// (zeroed) on first touch, so a packed block costs resident memory only for the slots ever used,
// max m over the cache's life, not its capacity of N rows: a model with one cache per layer at
// density d then holds about (1 + d) copies of its FFN weights, not 2. Smaller buffers (and hosts
// without mmap) are allocated and zeroed up front. >= kAlignBytes.
inline constexpr std::size_t kLazyCommitMinBytes = std::size_t{1} << 20;
// Defaults of the per-cache settings (environment variables override them at construction).
inline constexpr std::int64_t kDefaultGrain = 64;          // rows per parallel task; >= 1
inline constexpr std::int64_t kDefaultParThreshold = 64;   // copy in parallel when W >= this; >= 0
inline constexpr double kDefaultHybridTauFrac = 0.5;       // rebuild when W > tau * m'; finite >= 0
// Row ids and slots are int32 to halve the bookkeeping footprint.
inline constexpr std::int64_t kMaxRows = std::numeric_limits<std::int32_t>::max();

// ---- Public types ----------------------------------------------------------------------------
enum class UpdatePath : std::uint8_t { kNoop = 0, kPaired = 1, kRebuild = 2 };

inline const char* to_string(UpdatePath p) noexcept {
  switch (p) {
    case UpdatePath::kNoop: return "noop";
    case UpdatePath::kPaired: return "paired";
    case UpdatePath::kRebuild: return "rebuild";
  }
  return "?";
}

// What the last update did. rows_written counts rows per buffer (gate/up and down each get W).
struct UpdateStats {
  std::int64_t added = 0;         // A
  std::int64_t removed = 0;       // R
  std::int64_t rows_written = 0;  // W for the paired path, m' for a rebuild
  std::int64_t m_before = 0;
  std::int64_t m_after = 0;
  UpdatePath path = UpdatePath::kNoop;
};

// How much work the last update did besides the row copies (counted, not timed, so that tests can
// assert complexity): 64-bit mask words read, and body calls of the ParallelFor that copied rows
// (1 when the copy ran on the calling thread; with an OpenMP executor, the threads that took part).
struct UpdateWork {
  std::int64_t mask_words_scanned = 0;
  std::int64_t copy_tasks = 0;
  std::int64_t slow_bytes_read = 0;  // bytes a RowSource read from its tier (0: in-memory pool)
};

// Explicit per-cache values of the settings: an engaged field is taken as given and its
// environment variable is not read at all (so a malformed variable cannot block it).
struct SettingOverrides {
  std::optional<std::int64_t> grain, par_threshold;
  std::optional<double> hybrid_tau_frac;
};

// Per-cache knobs. Valid when grain >= 1, par_threshold >= 0, hybrid_tau_frac finite and >= 0.
struct Settings {
  std::int64_t grain = kDefaultGrain;
  std::int64_t par_threshold = kDefaultParThreshold;
  double hybrid_tau_frac = kDefaultHybridTauFrac;

  // Throws std::invalid_argument naming the first invalid field.
  void validate() const {
    if (grain < 1)
      throw std::invalid_argument("grain must be >= 1, got " + std::to_string(grain));
    if (par_threshold < 0)
      throw std::invalid_argument("par_threshold must be >= 0, got " +
                                  std::to_string(par_threshold));
    if (!std::isfinite(hybrid_tau_frac) || hybrid_tau_frac < 0.0)
      throw std::invalid_argument("hybrid_tau_frac must be finite and >= 0, got " +
                                  std::to_string(hybrid_tau_frac));
  }

  // The overrides where given, else WEIGHT_CACHE_GRAIN, WEIGHT_CACHE_PAR_THRESHOLD and
  // WEIGHT_CACHE_HYBRID_TAU_FRAC, else the defaults. A variable is parsed strictly after
  // surrounding white space is trimmed: a decimal integer, or a decimal number for the tau
  // (no hex, inf or nan). Throws std::invalid_argument naming a malformed or out-of-range
  // variable; an override is only checked by validate().
  static Settings from_environment(const SettingOverrides& overrides = {});
};

namespace detail {

// Row stride in bytes for a row of `row_bytes` (see kPadMinRowBytes).
constexpr std::size_t padded_row_bytes(std::size_t row_bytes) noexcept {
  return row_bytes < kPadMinRowBytes ? row_bytes
                                     : (row_bytes + kAlignBytes - 1) / kAlignBytes * kAlignBytes;
}

// a * b, or false when it does not fit in size_t.
inline bool checked_mul(std::size_t a, std::size_t b, std::size_t& out) noexcept {
  if (a != 0 && b > std::numeric_limits<std::size_t>::max() / a) return false;
  out = a * b;
  return true;
}

}  // namespace detail

// Shape of the cached FFN. Valid when rows in [1, kMaxRows], up_cols >= 1, gate_cols >= 0,
// hidden >= 1, elem_size in {1, 2, 4, 8}, and the four buffers (pools and packed blocks of both
// kinds) together have a byte size that fits in ptrdiff_t.
struct Shape {
  std::int64_t rows = 0;       // N
  std::int64_t gate_cols = 0;  // G (0: no gate)
  std::int64_t up_cols = 0;    // U
  std::int64_t hidden = 0;     // H: columns of a down^T row
  std::size_t elem_size = 0;   // bytes per element; the cache never looks inside an element

  // Row strides in bytes of the gate|up and down^T buffers. Precondition: validate() passed (or
  // at least the column counts are in range, which keeps these products far below 2^64).
  std::size_t concat_ld_bytes() const noexcept {
    return detail::padded_row_bytes(static_cast<std::size_t>(gate_cols + up_cols) * elem_size);
  }
  std::size_t down_ld_bytes() const noexcept {
    return detail::padded_row_bytes(static_cast<std::size_t>(hidden) * elem_size);
  }

  void validate() const {
    // Every extent stays below 2^31, so a row's byte size (< 2^36) cannot overflow; the buffer
    // sizes (rows * stride) can, and are checked below.
    if (gate_cols > kMaxRows || up_cols > kMaxRows || hidden > kMaxRows)
      throw std::invalid_argument("column counts must be <= " + std::to_string(kMaxRows));
    if (rows < 1 || rows > kMaxRows)
      throw std::invalid_argument("number of rows N must be in [1, " + std::to_string(kMaxRows) +
                                  "], got " + std::to_string(rows));
    if (up_cols < 1) throw std::invalid_argument("up_weight must have at least one column");
    if (gate_cols < 0) throw std::invalid_argument("gate column count must be >= 0");
    if (hidden < 1) throw std::invalid_argument("hidden_size must be >= 1");
    if (elem_size != 1 && elem_size != 2 && elem_size != 4 && elem_size != 8)
      throw std::invalid_argument("element size must be 1, 2, 4 or 8 bytes");
    std::size_t concat_bytes = 0, down_bytes = 0;
    const auto n = static_cast<std::size_t>(rows);
    constexpr auto kLimit = static_cast<std::size_t>(std::numeric_limits<std::ptrdiff_t>::max());
    // 2 * (concat + down) <= kLimit, written so that no step can wrap.
    if (!detail::checked_mul(n, concat_ld_bytes(), concat_bytes) ||
        !detail::checked_mul(n, down_ld_bytes(), down_bytes) || concat_bytes > kLimit / 4 ||
        down_bytes > kLimit / 4)
      throw std::invalid_argument(
          "the cache would need more than 2^63 bytes (N = " + std::to_string(rows) +
          ", gate|up row " + std::to_string(concat_ld_bytes()) + " B, down row " +
          std::to_string(down_ld_bytes()) + " B, two copies of each)");
  }
};

// ---- Row sources ------------------------------------------------------------------------------
// Where pool rows come from when they are not in the cache's own memory: a slower tier (a file
// read with direct I/O: file_pool.hpp). The cache keeps all its bookkeeping and asks the source
// only to fill packed slots; a cache built on a source holds no pool in memory (its resident
// memory is the packed rows it has used plus O(N) bookkeeping).
class RowSource {
 public:
  virtual ~RowSource() = default;
  // The shape of the rows; must not change over the source's life.
  virtual const Shape& shape() const noexcept = 0;
  // For i in [0, n): pool row rows[i] into packed slot slots[i] of both buffers -- its gate|up
  // data ((G + U) * elem_size bytes) at packed_concat + slots[i] * concat_ld and its down^T row
  // (H * elem_size bytes) at packed_down + slots[i] * down_ld; padding bytes are not written.
  // The slots are distinct. May use threads of its own; returns when every write has ended.
  // Throws std::runtime_error (naming the row) when a row cannot be read.
  virtual void fetch(std::int64_t n, const std::int32_t* slots, const std::int32_t* rows,
                     std::byte* packed_concat, std::size_t concat_ld, std::byte* packed_down,
                     std::size_t down_ld) = 0;
  // Bytes read from the tier since construction (whole records, so it may exceed the data).
  virtual std::uint64_t bytes_read() const noexcept = 0;
};

namespace detail {

// Aligned, zero-initialised byte buffer shared with whoever exposes views of it (the binding hands
// a copy of the shared_ptr to every tensor it creates, so views never dangle).
// With `lazy` (and bytes >= kLazyCommitMinBytes on a POSIX host) the buffer is an anonymous
// mapping: page-aligned, zero on first read, resident only once touched. Throws std::bad_alloc.
inline std::shared_ptr<std::byte> make_aligned_buffer(std::size_t bytes, bool lazy = false) {
  const std::size_t size = std::max<std::size_t>(bytes, kAlignBytes);
#ifdef PAIRED_REPLACEMENT_MMAP
  if (lazy && size >= kLazyCommitMinBytes) {
    void* m = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::bad_alloc();
    PAIRED_REPLACEMENT_ASSERT(reinterpret_cast<std::uintptr_t>(m) % kAlignBytes == 0);
    return std::shared_ptr<std::byte>(static_cast<std::byte*>(m),
                                      [size](std::byte* q) { ::munmap(q, size); });
  }
#endif
  (void)lazy;
  auto* p = static_cast<std::byte*>(::operator new(size, std::align_val_t{kAlignBytes}));
  std::memset(p, 0, size);  // defined padding, and pages committed before the first timed update
  return std::shared_ptr<std::byte>(
      p, [](std::byte* q) { ::operator delete(q, std::align_val_t{kAlignBytes}); });
}

// [b, e) of the NUL-terminated s without surrounding white space.
inline void trim(const char* s, const char*& b, const char*& e) noexcept {
  const auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
  b = s;
  while (*b && space(*b)) ++b;
  e = b + std::strlen(b);
  while (e > b && space(e[-1])) --e;
}

inline bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }

// Parses a decimal integer ([+-]?digits, white space around it ignored); false on anything else
// (junk, empty input, hex, overflow).
inline bool parse_int64(const char* s, std::int64_t& out) {
  if (!s) return false;
  const char *b = nullptr, *e = nullptr;
  trim(s, b, e);
  const char* p = b + (b < e && (*b == '+' || *b == '-'));
  if (p == e) return false;
  for (const char* q = p; q < e; ++q)
    if (!is_digit(*q)) return false;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(b, &end, 10);
  if (errno != 0 || end != e) return false;
  out = static_cast<std::int64_t>(v);
  return true;
}

// Parses a finite decimal number ([+-]? digits [. digits] [e [+-] digits], or starting with the
// point; white space around it ignored); false on anything else (hex, inf, nan, overflow).
inline bool parse_double(const char* s, double& out) {
  if (!s) return false;
  const char *b = nullptr, *e = nullptr;
  trim(s, b, e);
  const char* p = b + (b < e && (*b == '+' || *b == '-'));
  std::size_t mantissa_digits = 0;
  for (; p < e && is_digit(*p); ++p) ++mantissa_digits;
  if (p < e && *p == '.')
    for (++p; p < e && is_digit(*p); ++p) ++mantissa_digits;
  if (mantissa_digits == 0) return false;
  if (p < e && (*p == 'e' || *p == 'E')) {
    ++p;
    if (p < e && (*p == '+' || *p == '-')) ++p;
    if (p == e || !is_digit(*p)) return false;
    while (p < e && is_digit(*p)) ++p;
  }
  if (p != e) return false;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(b, &end);
  // ERANGE on underflow still yields a usable tiny value; only overflow (inf) is rejected.
  if ((errno != 0 && std::fabs(v) >= 1.0) || end != e || !std::isfinite(v)) return false;
  out = v;
  return true;
}

// Copies [src, src + bytes) to dst. Contract: ranges do not overlap. With `streaming`, dst and
// src 64-byte aligned and bytes % 64 == 0, uses non-temporal stores (caller issues
// store_fence() before the data is read by another thread).
inline void copy_row(std::byte* dst, const std::byte* src, std::size_t bytes,
                     bool streaming) noexcept {
#if defined(PAIRED_REPLACEMENT_X86)
  if (streaming && bytes % 64 == 0 && reinterpret_cast<std::uintptr_t>(dst) % 64 == 0 &&
      reinterpret_cast<std::uintptr_t>(src) % 64 == 0) {
#if defined(__AVX512F__)
    for (std::size_t i = 0; i < bytes; i += 64)
      _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + i),
                          _mm512_load_si512(reinterpret_cast<const void*>(src + i)));
#elif defined(__AVX__)
    for (std::size_t i = 0; i < bytes; i += 64) {
      const __m256i a = _mm256_load_si256(reinterpret_cast<const __m256i*>(src + i));
      const __m256i b = _mm256_load_si256(reinterpret_cast<const __m256i*>(src + i + 32));
      _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i), a);
      _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i + 32), b);
    }
#else
    for (std::size_t i = 0; i < bytes; i += 64) {
      const __m128i a = _mm_load_si128(reinterpret_cast<const __m128i*>(src + i));
      const __m128i b = _mm_load_si128(reinterpret_cast<const __m128i*>(src + i + 16));
      const __m128i c = _mm_load_si128(reinterpret_cast<const __m128i*>(src + i + 32));
      const __m128i d = _mm_load_si128(reinterpret_cast<const __m128i*>(src + i + 48));
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
    }
#endif
    return;
  }
#else
  (void)streaming;
#endif
  std::memcpy(dst, src, bytes);
}

// Orders earlier non-temporal stores before later loads/stores of any thread.
inline void store_fence() noexcept {
#if defined(PAIRED_REPLACEMENT_X86)
  _mm_sfence();
#endif
}

// Packs n bytes (stride `stride`, nonzero = on) into 64-bit words, bit j of word w = entry 64w+j.
// Contract: words has ceil(n/64) entries; the unused high bits of the last word are cleared.
inline void pack_mask(const std::uint8_t* mask, std::int64_t n, std::int64_t stride,
                      std::uint64_t* words) noexcept {
  const std::int64_t full = n / 64;
  if (stride == 1) {
    for (std::int64_t w = 0; w < full; ++w) {
      const std::uint8_t* p = mask + 64 * w;
      std::uint64_t bits = 0;
#if defined(PAIRED_REPLACEMENT_X86)
      const __m128i zero = _mm_setzero_si128();
      for (int q = 0; q < 4; ++q) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * q));
        const auto is_zero = static_cast<std::uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(v, zero)));
        bits |= static_cast<std::uint64_t>(~is_zero & 0xFFFFu) << (16 * q);
      }
#else
      for (int q = 0; q < 8; ++q) {
        std::uint64_t x;
        std::memcpy(&x, p + 8 * q, 8);
        // Set the high bit of every nonzero byte, move it to bit 0, gather the 8 bits (SWAR).
        x = (((x & 0x7F7F7F7F7F7F7F7FULL) + 0x7F7F7F7F7F7F7F7FULL) | x) & 0x8080808080808080ULL;
        x >>= 7;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        std::uint64_t b = 0;
        for (int i = 0; i < 8; ++i) b |= ((x >> (8 * (7 - i))) & 1u) << i;
#else
        const std::uint64_t b = (x * 0x0102040810204080ULL) >> 56;
#endif
        bits |= b << (8 * q);
      }
#endif
      words[w] = bits;
    }
  } else {
    for (std::int64_t w = 0; w < full; ++w) {
      std::uint64_t bits = 0;
      for (int j = 0; j < 64; ++j)
        bits |= static_cast<std::uint64_t>(mask[(64 * w + j) * stride] != 0) << j;
      words[w] = bits;
    }
  }
  if (n % 64 != 0) {
    std::uint64_t bits = 0;
    for (std::int64_t j = 0; j < n % 64; ++j)
      bits |= static_cast<std::uint64_t>(mask[(64 * full + j) * stride] != 0) << j;
    words[full] = bits;
  }
}

inline int count_trailing_zeros(std::uint64_t x) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  return __builtin_ctzll(x);
#else
  int n = 0;
  while (!(x & 1u)) { x >>= 1; ++n; }
  return n;
#endif
}

inline std::int64_t popcount(std::uint64_t x) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  return __builtin_popcountll(x);
#else
  std::int64_t n = 0;
  for (; x; x &= x - 1) ++n;
  return n;
#endif
}

// Smallest e >= 0 with 2^e >= x, for x >= 1.
inline std::int64_t ceil_log2(std::int64_t x) noexcept {
  std::int64_t e = 0;
  while ((std::int64_t{1} << e) < x) ++e;
  return e;
}

// Calls f(index) for each set bit of `bits`, ascending; `base` is the index of bit 0.
template <class F>
inline void for_each_bit(std::uint64_t bits, std::int64_t base, F&& f) {
  while (bits) {
    f(base + count_trailing_zeros(bits));
    bits &= bits - 1;
  }
}

// Writes the [rows, cols] row-major matrix src of kElemBytes-byte elements transposed into dst
// rows of stride dst_ld bytes: dst row c = column c of src. Tiled so both sides stay in cache.
// Elements are moved with memcpy (one move instruction at a constant size), never through a
// pointer of another type, so there is no strict-aliasing question whatever the caller's type.
template <std::size_t kElemBytes>
void transpose_into(const std::byte* src, std::int64_t rows, std::int64_t cols, std::byte* dst,
                    std::size_t dst_ld) noexcept {
  constexpr std::int64_t kTile = 32;
  const auto ucols = static_cast<std::size_t>(cols);
  for (std::int64_t r0 = 0; r0 < rows; r0 += kTile) {
    const std::int64_t r1 = std::min(rows, r0 + kTile);
    for (std::int64_t c0 = 0; c0 < cols; c0 += kTile) {
      const std::int64_t c1 = std::min(cols, c0 + kTile);
      for (std::int64_t c = c0; c < c1; ++c) {
        std::byte* out = dst + static_cast<std::size_t>(c) * dst_ld;
        for (std::int64_t r = r0; r < r1; ++r) {
          const auto ur = static_cast<std::size_t>(r), uc = static_cast<std::size_t>(c);
          std::memcpy(out + ur * kElemBytes, src + (ur * ucols + uc) * kElemBytes, kElemBytes);
        }
      }
    }
  }
}

// Runs body(begin, end) over [0, n) on the calling thread.
struct SerialFor {
  template <class Body>
  void operator()(std::int64_t begin, std::int64_t end, std::int64_t /*grain*/,
                  const Body& body) const {
    if (begin < end) body(begin, end);
  }
};

}  // namespace detail

using detail::SerialFor;

inline Settings Settings::from_environment(const SettingOverrides& overrides) {
  Settings s;
  // Each variable is parsed and range-checked on its own so that the error names it exactly.
  const auto fail = [](const char* name, const char* what, const char* value) {
    throw std::invalid_argument(std::string("environment variable ") + name + " must be " + what +
                                ", got '" + value + "'");
  };
  const char* v = nullptr;
  if (overrides.grain) {
    s.grain = *overrides.grain;
  } else if ((v = std::getenv("WEIGHT_CACHE_GRAIN")) &&
             (!detail::parse_int64(v, s.grain) || s.grain < 1)) {
    fail("WEIGHT_CACHE_GRAIN", "an integer >= 1", v);
  }
  if (overrides.par_threshold) {
    s.par_threshold = *overrides.par_threshold;
  } else if ((v = std::getenv("WEIGHT_CACHE_PAR_THRESHOLD")) &&
             (!detail::parse_int64(v, s.par_threshold) || s.par_threshold < 0)) {
    fail("WEIGHT_CACHE_PAR_THRESHOLD", "an integer >= 0", v);
  }
  if (overrides.hybrid_tau_frac) {
    s.hybrid_tau_frac = *overrides.hybrid_tau_frac;
  } else if ((v = std::getenv("WEIGHT_CACHE_HYBRID_TAU_FRAC")) &&
             (!detail::parse_double(v, s.hybrid_tau_frac) || s.hybrid_tau_frac < 0.0)) {
    fail("WEIGHT_CACHE_HYBRID_TAU_FRAC", "a finite decimal number >= 0", v);
  }
  return s;
}

// The cache. Not thread-safe: one thread updates at a time; the ParallelFor passed to an update
// may run the copies on several threads.
class WeightCache {
 public:
  // Builds the pools from row-major gate [N, G] (may be null when G == 0), up [N, U] and
  // down [H, N] (all with shape.elem_size-byte elements), then loads `mask` (N bytes, stride
  // `mask_stride`, nonzero = active) by a rebuild. Throws std::invalid_argument on a bad shape or
  // settings, std::bad_alloc when memory runs out. Allocates (the only member that does).
  WeightCache(const Shape& shape, const void* gate, const void* up, const void* down,
              const std::uint8_t* mask, std::int64_t mask_stride, const Settings& settings)
      : shape_(shape), settings_(settings) {
    shape_.validate();
    settings_.validate();
    if (shape_.gate_cols > 0 && gate == nullptr)
      throw std::invalid_argument("gate data is null but gate_cols > 0");
    if (up == nullptr || down == nullptr || mask == nullptr)
      throw std::invalid_argument("up, down and mask data must not be null");
    const std::size_t es = shape_.elem_size;
    const auto n = static_cast<std::size_t>(shape_.rows);
    concat_ld_ = shape_.concat_ld_bytes();
    down_ld_ = shape_.down_ld_bytes();
    pool_concat_ = detail::make_aligned_buffer(n * concat_ld_);
    pool_down_ = detail::make_aligned_buffer(n * down_ld_);
    // Capacity N rows, committed as slots are first used (kLazyCommitMinBytes).
    packed_concat_ = detail::make_aligned_buffer(n * concat_ld_, /*lazy=*/true);
    packed_down_ = detail::make_aligned_buffer(n * down_ld_, /*lazy=*/true);

    const std::size_t gate_bytes = static_cast<std::size_t>(shape_.gate_cols) * es;
    const std::size_t up_bytes = static_cast<std::size_t>(shape_.up_cols) * es;
    for (std::size_t r = 0; r < n; ++r) {
      std::byte* dst = pool_concat_.get() + r * concat_ld_;
      if (gate_bytes) std::memcpy(dst, static_cast<const std::byte*>(gate) + r * gate_bytes, gate_bytes);
      std::memcpy(dst + gate_bytes, static_cast<const std::byte*>(up) + r * up_bytes, up_bytes);
    }
    const auto* down_bytes = static_cast<const std::byte*>(down);
    switch (es) {
      case 1: detail::transpose_into<1>(down_bytes, shape_.hidden, shape_.rows, pool_down_.get(), down_ld_); break;
      case 2: detail::transpose_into<2>(down_bytes, shape_.hidden, shape_.rows, pool_down_.get(), down_ld_); break;
      case 4: detail::transpose_into<4>(down_bytes, shape_.hidden, shape_.rows, pool_down_.get(), down_ld_); break;
      default: detail::transpose_into<8>(down_bytes, shape_.hidden, shape_.rows, pool_down_.get(), down_ld_); break;
    }

    start(mask, mask_stride);
  }

  // A cache whose pool is `source` (a slower tier: file_pool.hpp's FileRowSource); the shape is
  // the source's. Loads `mask` by a rebuild that reads its rows from the source. Throws
  // std::invalid_argument on a null source, a bad shape or settings, std::bad_alloc, and the
  // source's std::runtime_error when the initial rows cannot be read. Allocates.
  WeightCache(std::shared_ptr<RowSource> source, const std::uint8_t* mask,
              std::int64_t mask_stride, const Settings& settings)
      : settings_(settings), source_(std::move(source)) {
    if (!source_) throw std::invalid_argument("row source is null");
    shape_ = source_->shape();
    shape_.validate();
    settings_.validate();
    if (mask == nullptr) throw std::invalid_argument("mask data must not be null");
    const auto n = static_cast<std::size_t>(shape_.rows);
    concat_ld_ = shape_.concat_ld_bytes();
    down_ld_ = shape_.down_ld_bytes();
    packed_concat_ = detail::make_aligned_buffer(n * concat_ld_, /*lazy=*/true);
    packed_down_ = detail::make_aligned_buffer(n * down_ld_, /*lazy=*/true);
    start(mask, mask_stride);
  }

  WeightCache(const WeightCache&) = delete;
  WeightCache& operator=(const WeightCache&) = delete;
  // A moved-from cache may only be destroyed or assigned to (its buffers are gone).
  WeightCache(WeightCache&&) = default;
  WeightCache& operator=(WeightCache&&) = default;

  // Makes the active set equal `mask` (N bytes at stride `mask_stride`, nonzero = active).
  // O(N/64) to diff the mask words plus O(A + R) bookkeeping plus the row copies. Never throws
  // with the in-memory pool. With a RowSource, a row that cannot be read throws the source's
  // std::runtime_error after the cache was reset to no active row (m = 0, a valid state that any
  // later update leaves): rows already overwritten cannot be restored without the I/O that just
  // failed, so this is the one exception to I7. Same for update_from_indices.
  //
  // ParallelFor contract (both updates): parallel_for(0, n, grain, body) calls body(b, e) on
  // disjoint ranges covering [0, n), possibly on several threads, and returns (or throws) only
  // after every body call it started has returned. It may throw (e.g. it could not start its
  // threads): the update then redoes all its copies on the calling thread, which is correct
  // because every copy reads a pool row and writes a distinct slot (idempotent).
  template <class ParallelFor = SerialFor>
  void update_from_mask(const std::uint8_t* mask, std::int64_t mask_stride,
                        const ParallelFor& parallel_for = ParallelFor{}) {
    detail::pack_mask(mask, shape_.rows, mask_stride, scratch_words_.data());
    std::int64_t num_added = 0, num_removed = 0;
    for (std::size_t w = 0; w < mask_words_.size(); ++w) {
      const std::uint64_t old_bits = mask_words_[w], new_bits = scratch_words_[w];
      if (old_bits == new_bits) continue;
      const auto base = static_cast<std::int64_t>(w) * 64;
      detail::for_each_bit(new_bits & ~old_bits, base, [&](std::int64_t r) {
        added_[num_added++] = static_cast<std::int32_t>(r);
      });
      detail::for_each_bit(old_bits & ~new_bits, base, [&](std::int64_t r) {
        removed_[num_removed++] = static_cast<std::int32_t>(r);
      });
    }
    mask_words_.swap(scratch_words_);
    work_ = UpdateWork{static_cast<std::int64_t>(mask_words_.size()), 0, 0};
    apply_or_reset(num_added, num_removed, parallel_for);
  }

  // Activates rows added[0, num_added) and deactivates removed[0, num_removed), in that order of
  // slot assignment. O(A + R) plus the row copies on the paired path, and O(m + m' log m') when
  // the hybrid rebuild fires at small m' (see order_by_sort) — never O(N). Throws
  // std::out_of_range for an id outside [0, N) and std::invalid_argument for a duplicate, an
  // added row that is already active or a removed row that is not; the cache is then unchanged.
  template <class ParallelFor = SerialFor>
  void update_from_indices(const std::int64_t* added, std::int64_t num_added,
                           const std::int64_t* removed, std::int64_t num_removed,
                           const ParallelFor& parallel_for = ParallelFor{}) {
    if (num_added < 0 || num_removed < 0) throw std::invalid_argument("negative index count");
    validate_ids(added, num_added, "added", /*must_be_active=*/false);
    validate_ids(removed, num_removed, "removed", /*must_be_active=*/true);
    // Both lists are valid and disjoint (one is all inactive, the other all active).
    for (std::int64_t i = 0; i < num_added; ++i) {
      added_[i] = static_cast<std::int32_t>(added[i]);
      set_bit(mask_words_, added[i]);
    }
    for (std::int64_t i = 0; i < num_removed; ++i) {
      removed_[i] = static_cast<std::int32_t>(removed[i]);
      clear_bit(mask_words_, removed[i]);
    }
    work_ = UpdateWork{};
    apply_or_reset(num_added, num_removed, parallel_for);
  }

  // ---- Observers (O(1) unless stated) ----
  const Shape& shape() const noexcept { return shape_; }
  std::int64_t rows() const noexcept { return shape_.rows; }
  std::int64_t concat_cols() const noexcept { return shape_.gate_cols + shape_.up_cols; }
  std::int64_t num_active() const noexcept { return m_; }
  // Row strides in bytes of the gate|up and down^T buffers (pool and packed alike).
  std::size_t concat_ld_bytes() const noexcept { return concat_ld_; }
  std::size_t down_ld_bytes() const noexcept { return down_ld_; }
  // Packed buffers (capacity N rows; slots [0, m) are live) and pools ([N] rows), with owners.
  // The pools are null when the rows come from a RowSource.
  const std::shared_ptr<std::byte>& packed_concat() const noexcept { return packed_concat_; }
  const std::shared_ptr<std::byte>& packed_down() const noexcept { return packed_down_; }
  const std::shared_ptr<std::byte>& pool_concat() const noexcept { return pool_concat_; }
  const std::shared_ptr<std::byte>& pool_down() const noexcept { return pool_down_; }
  // Row ids in slot order: [active_rows(), active_rows() + num_active()).
  const std::int32_t* active_rows() const noexcept { return row_at_.data(); }
  // Slot of row r in [0, N), or -1 when inactive.
  std::int32_t slot_of(std::int64_t r) const noexcept { return slot_of_[static_cast<std::size_t>(r)]; }
  bool is_active(std::int64_t r) const noexcept { return test_bit(mask_words_, r); }
  const UpdateStats& last_update_stats() const noexcept { return stats_; }
  const UpdateWork& last_update_work() const noexcept { return work_; }
  // The source of the pool rows, or null when the pool is in the cache's own memory.
  const std::shared_ptr<RowSource>& row_source() const noexcept { return source_; }
  const Settings& settings() const noexcept { return settings_; }
  // Replaces the settings. Throws std::invalid_argument (cache unchanged) when invalid.
  void set_settings(const Settings& s) {
    s.validate();
    settings_ = s;
  }

  // Checks I1–I5 in O(N * row bytes). Throws std::logic_error naming the first violation.
  void check_invariants() const {
    const auto fail = [](const std::string& what) {
      throw std::logic_error("paired_replacement invariant violated: " + what);
    };
    if (m_ < 0 || m_ > shape_.rows || m_ != count_active(mask_words_)) fail("I1 (m == popcount)");
    // With a RowSource the pool row is read back into a zeroed one-row buffer (so the padding
    // compares against zero, as I5 wants).
    std::vector<std::byte> row_c(source_ ? concat_ld_ : 0), row_d(source_ ? down_ld_ : 0);
    for (std::int64_t s = 0; s < m_; ++s) {
      const std::int32_t r = row_at_[static_cast<std::size_t>(s)];
      if (r < 0 || r >= shape_.rows || !is_active(r) || slot_of_[static_cast<std::size_t>(r)] != s)
        fail("I2 (row_at/slot_of disagree at slot " + std::to_string(s) + ")");
      const std::byte* pool_c = pool_concat_ ? pool_concat_.get() + r * concat_ld_ : row_c.data();
      const std::byte* pool_d = pool_down_ ? pool_down_.get() + r * down_ld_ : row_d.data();
      if (source_) {
        const std::int32_t zero = 0;
        source_->fetch(1, &zero, &r, row_c.data(), concat_ld_, row_d.data(), down_ld_);
      }
      if (std::memcmp(packed_concat_.get() + s * concat_ld_, pool_c, concat_ld_) != 0 ||
          std::memcmp(packed_down_.get() + s * down_ld_, pool_d, down_ld_) != 0)
        fail("I4 (packed slot " + std::to_string(s) + " differs from pool row " + std::to_string(r) + ")");
    }
    for (std::int64_t r = 0; r < shape_.rows; ++r)
      if ((slot_of_[static_cast<std::size_t>(r)] < 0) == is_active(r))
        fail("I3 (slot_of[" + std::to_string(r) + "] disagrees with the mask)");
    for (const auto* p : {packed_concat_.get(), packed_down_.get(), pool_concat_.get(), pool_down_.get()})
      if (reinterpret_cast<std::uintptr_t>(p) % kAlignBytes != 0) fail("I5 (alignment)");  // null: 0
  }

 private:
  static bool test_bit(const std::vector<std::uint64_t>& w, std::int64_t i) noexcept {
    return (w[static_cast<std::size_t>(i >> 6)] >> (i & 63)) & 1u;
  }
  static void set_bit(std::vector<std::uint64_t>& w, std::int64_t i) noexcept {
    w[static_cast<std::size_t>(i >> 6)] |= std::uint64_t{1} << (i & 63);
  }
  static void clear_bit(std::vector<std::uint64_t>& w, std::int64_t i) noexcept {
    w[static_cast<std::size_t>(i >> 6)] &= ~(std::uint64_t{1} << (i & 63));
  }
  static std::int64_t count_active(const std::vector<std::uint64_t>& w) noexcept {
    std::int64_t n = 0;
    for (const std::uint64_t x : w) n += detail::popcount(x);
    return n;
  }

  void debug_check() const noexcept {
#ifdef PAIRED_REPLACEMENT_DEBUG
    try {
      check_invariants();
    } catch (const std::exception& e) {  // same behaviour as PAIRED_REPLACEMENT_ASSERT
      std::fprintf(stderr, "%s\n", e.what());
      std::abort();
    }
#endif
  }

  // Validates ids[0, n): in range, no duplicates, active state == must_be_active. Uses
  // seen_words_ as a "seen" bitset and leaves it all-zero on return or throw. O(n).
  void validate_ids(const std::int64_t* ids, std::int64_t n, const char* name, bool must_be_active) {
    if (n > 0 && ids == nullptr) throw std::invalid_argument(std::string(name) + " is null");
    std::int64_t i = 0;
    const char* problem = nullptr;  // the message is built only on failure: no allocation here
    for (; i < n; ++i) {
      const std::int64_t r = ids[i];
      if (r < 0 || r >= shape_.rows) { problem = "out of range"; break; }
      if (test_bit(seen_words_, r)) { problem = "a duplicate"; break; }
      if (is_active(r) != must_be_active) {
        problem = must_be_active ? "not active" : "already active";
        break;
      }
      set_bit(seen_words_, r);
    }
    for (std::int64_t j = 0; j < i; ++j) clear_bit(seen_words_, ids[j]);
    if (problem == nullptr) return;
    std::string error = std::string(name) + "[" + std::to_string(i) + "] = " +
                        std::to_string(ids[i]) + " is " + problem;
    if (ids[i] < 0 || ids[i] >= shape_.rows) {
      error += " [0, " + std::to_string(shape_.rows) + ")";
      throw std::out_of_range(error);
    }
    throw std::invalid_argument(error);
  }

  // The bookkeeping of a new cache (scratch arrays sized N: nothing allocates after this) and the
  // initial load of `mask` by a rebuild. Shared by both constructors.
  void start(const std::uint8_t* mask, std::int64_t mask_stride) {
    const auto n = static_cast<std::size_t>(shape_.rows);
    const auto num_words = static_cast<std::size_t>((shape_.rows + 63) / 64);
    mask_words_.assign(num_words, 0);
    scratch_words_.assign(num_words, 0);
    seen_words_.assign(num_words, 0);
    slot_of_.assign(n, -1);
    row_at_.assign(n, -1);
    added_.assign(n, 0);
    removed_.assign(n, 0);
    holes_.assign(n, 0);
    fillers_.assign(n, 0);

    detail::pack_mask(mask, shape_.rows, mask_stride, mask_words_.data());
    const std::int64_t m = count_active(mask_words_);
    order_by_scan(m);
    copy_all_active(m, detail::SerialFor{});
    stats_ = UpdateStats{m, 0, m, 0, m, UpdatePath::kRebuild};
    debug_check();
  }

  // apply(); when a RowSource throws (only a source can), the cache is reset to no active row
  // before the error goes on (see update_from_mask).
  template <class ParallelFor>
  void apply_or_reset(std::int64_t num_added, std::int64_t num_removed,
                      const ParallelFor& parallel_for) {
    try {
      apply(num_added, num_removed, parallel_for);
    } catch (...) {
      std::fill(mask_words_.begin(), mask_words_.end(), std::uint64_t{0});
      std::fill(slot_of_.begin(), slot_of_.end(), std::int32_t{-1});
      stats_ = UpdateStats{num_added, num_removed, 0, m_, 0, UpdatePath::kRebuild};
      m_ = 0;
      throw;
    }
  }

  // Common tail of both updates. Preconditions: mask_words_ holds the new mask; added_[0, A) are
  // the newly active rows, removed_[0, R) the newly inactive ones; slot bookkeeping is still old.
  template <class ParallelFor>
  void apply(std::int64_t num_added, std::int64_t num_removed,
             const ParallelFor& parallel_for) {  // throws only what a RowSource throws
    const std::int64_t m_old = m_;
    const std::int64_t m_new = m_old - num_removed + num_added;
    PAIRED_REPLACEMENT_ASSERT(m_new >= 0 && m_new <= shape_.rows);
    if (num_added == 0 && num_removed == 0) {
      stats_ = UpdateStats{0, 0, 0, m_old, m_old, UpdatePath::kNoop};
      return;
    }
    // Holes of the new prefix: removed slots below m_new, then the growth slots.
    std::int64_t num_holes = 0;
    for (std::int64_t i = 0; i < num_removed; ++i) {
      const std::int32_t s = slot_of_[static_cast<std::size_t>(removed_[i])];
      if (s < m_new) holes_[num_holes++] = s;
    }
    for (std::int64_t s = m_old; s < m_new; ++s) holes_[num_holes++] = static_cast<std::int32_t>(s);

    if (static_cast<double>(num_holes) > settings_.hybrid_tau_frac * static_cast<double>(m_new)) {
      // The cheaper way to the ascending order of the new active set (estimated in elementary
      // steps): scan the mask words, or sort the kept and added rows we already hold.
      const auto num_words = static_cast<std::int64_t>(mask_words_.size());
      if (m_old + m_new * detail::ceil_log2(m_new + 1) < num_words)
        order_by_sort(m_new, num_added, num_removed);
      else
        order_by_scan(m_new);
      copy_all_active(m_new, parallel_for);
      stats_ = UpdateStats{num_added, num_removed, m_new, m_old, m_new, UpdatePath::kRebuild};
      debug_check();
      return;
    }
    for (std::int64_t i = 0; i < num_removed; ++i) slot_of_[static_cast<std::size_t>(removed_[i])] = -1;
    // Fillers: the added rows, then kept rows stranded in the tail [m_new, m_old).
    std::int64_t num_fillers = 0;
    for (std::int64_t i = 0; i < num_added; ++i) fillers_[num_fillers++] = added_[i];
    for (std::int64_t s = m_new; s < m_old; ++s) {
      const std::int32_t r = row_at_[static_cast<std::size_t>(s)];
      if (slot_of_[static_cast<std::size_t>(r)] == s) fillers_[num_fillers++] = r;
    }
    PAIRED_REPLACEMENT_ASSERT(num_fillers == num_holes);
    for (std::int64_t i = 0; i < num_holes; ++i) {
      row_at_[static_cast<std::size_t>(holes_[i])] = fillers_[i];
      slot_of_[static_cast<std::size_t>(fillers_[i])] = holes_[i];
    }
    if (source_) {
      fetch_rows(num_holes, holes_.data(), fillers_.data());
    } else {
      const std::int32_t* holes = holes_.data();
      const std::int32_t* fillers = fillers_.data();
      copy_rows(num_holes, [=](std::int64_t i) { return holes[i]; },
                [=](std::int64_t i) { return fillers[i]; }, parallel_for);
    }
    m_ = m_new;
    stats_ = UpdateStats{num_added, num_removed, num_holes, m_old, m_new, UpdatePath::kPaired};
    debug_check();
  }

  // Slot bookkeeping of a rebuild, by a scan of the mask: row_at_[0, m_new) = the active rows in
  // ascending order, slot_of_ to match. Precondition: mask_words_ holds the new mask with m_new
  // bits set; row_at_[0, m_) the old active rows. O(N/64 + m_ + m_new).
  void order_by_scan(std::int64_t m_new) noexcept {
    for (std::int64_t s = 0; s < m_; ++s) slot_of_[static_cast<std::size_t>(row_at_[static_cast<std::size_t>(s)])] = -1;
    std::int32_t slot = 0;
    for (std::size_t w = 0; w < mask_words_.size(); ++w)
      detail::for_each_bit(mask_words_[w], static_cast<std::int64_t>(w) * 64, [&](std::int64_t r) {
        row_at_[static_cast<std::size_t>(slot)] = static_cast<std::int32_t>(r);
        slot_of_[static_cast<std::size_t>(r)] = slot++;
      });
    work_.mask_words_scanned += static_cast<std::int64_t>(mask_words_.size());
    PAIRED_REPLACEMENT_ASSERT(slot == m_new);
    (void)m_new;
  }

  // The same result as order_by_scan without reading the mask: the old active rows minus
  // removed_[0, R), plus added_[0, A), sorted. Preconditions as in apply(). O(m_ + m_new log m_new),
  // no allocation (std::sort works in place).
  void order_by_sort(std::int64_t m_new, std::int64_t num_added, std::int64_t num_removed) noexcept {
    for (std::int64_t i = 0; i < num_removed; ++i) slot_of_[static_cast<std::size_t>(removed_[i])] = -1;
    std::size_t n = 0;  // compacts row_at_ in place: n <= s throughout
    for (std::int64_t s = 0; s < m_; ++s) {
      const std::int32_t r = row_at_[static_cast<std::size_t>(s)];
      if (slot_of_[static_cast<std::size_t>(r)] >= 0) row_at_[n++] = r;
    }
    for (std::int64_t i = 0; i < num_added; ++i) row_at_[n++] = added_[i];
    PAIRED_REPLACEMENT_ASSERT(static_cast<std::int64_t>(n) == m_new);
    (void)m_new;
    std::sort(row_at_.begin(), row_at_.begin() + static_cast<std::ptrdiff_t>(n));
    for (std::size_t s = 0; s < n; ++s) slot_of_[static_cast<std::size_t>(row_at_[s])] = static_cast<std::int32_t>(s);
  }

  // Copies pool row row_at_[s] into slot s for every s < m_new (the copy half of a rebuild).
  template <class ParallelFor>
  void copy_all_active(std::int64_t m_new, const ParallelFor& parallel_for) {
    if (source_) {  // slot i <- row_at_[i]: holes_ is free scratch during a rebuild
      for (std::int64_t i = 0; i < m_new; ++i) holes_[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i);
      fetch_rows(m_new, holes_.data(), row_at_.data());
    } else {
      const std::int32_t* rows = row_at_.data();
      copy_rows(m_new, [](std::int64_t i) { return i; }, [=](std::int64_t i) { return rows[i]; },
                parallel_for);
    }
    m_ = m_new;
  }

  // The RowSource path of the row copies: the source fills the slots (its own threads) and the
  // bytes it read are counted in work_.slow_bytes_read (also when it throws).
  void fetch_rows(std::int64_t n, const std::int32_t* slots, const std::int32_t* rows) {
    if (n <= 0) return;
    const std::uint64_t before = source_->bytes_read();
    struct Count {
      RowSource* source;
      std::uint64_t before;
      UpdateWork* work;
      ~Count() { work->slow_bytes_read += static_cast<std::int64_t>(source->bytes_read() - before); }
    } count{source_.get(), before, &work_};
    work_.copy_tasks += 1;
    source_->fetch(n, slots, rows, packed_concat_.get(), concat_ld_, packed_down_.get(), down_ld_);
  }

  // For i in [0, n): packed slot dst_slot(i) <- pool row src_row(i), both buffers; in parallel
  // when n >= par_threshold. Contract: the dst slots are distinct. Counts the body calls in
  // work_.copy_tasks. Each body call fences its own non-temporal stores before it returns, so the
  // rows are visible to any thread once the executor has returned.
  template <class DstSlot, class SrcRow, class ParallelFor>
  void copy_rows(std::int64_t n, DstSlot dst_slot, SrcRow src_row,
                 const ParallelFor& parallel_for) noexcept {
    if (n <= 0) return;
    const bool streaming = static_cast<std::size_t>(n) * (concat_ld_ + down_ld_) >= kStreamingMinBytes;
    std::byte* const pc = packed_concat_.get();
    std::byte* const pd = packed_down_.get();
    const std::byte* const qc = pool_concat_.get();
    const std::byte* const qd = pool_down_.get();
    const std::size_t lc = concat_ld_, ld = down_ld_;
    std::atomic<std::int64_t> tasks{0};
    std::atomic<std::int64_t>* const task_count = &tasks;
    const auto body = [=](std::int64_t begin, std::int64_t end) noexcept {
      task_count->fetch_add(1, std::memory_order_relaxed);
      for (std::int64_t i = begin; i < end; ++i) {
        const auto s = static_cast<std::size_t>(dst_slot(i));
        const auto r = static_cast<std::size_t>(src_row(i));
        detail::copy_row(pc + s * lc, qc + r * lc, lc, streaming);
        detail::copy_row(pd + s * ld, qd + r * ld, ld, streaming);
      }
      if (streaming) detail::store_fence();
    };
    if (n >= settings_.par_threshold) {
      try {
        parallel_for(std::int64_t{0}, n, settings_.grain, body);
      } catch (...) {
        // Only the executor can throw (the body cannot). See the ParallelFor contract: redo
        // every copy here; the bookkeeping already describes the new state, so the update
        // completes as if nothing had happened (I7 needs no rollback).
        tasks.store(0, std::memory_order_relaxed);
        body(0, n);
      }
    } else {
      body(0, n);
    }
    work_.copy_tasks += tasks.load(std::memory_order_relaxed);
  }

  Shape shape_;
  Settings settings_;
  std::size_t concat_ld_ = 0, down_ld_ = 0;  // row strides in bytes
  std::shared_ptr<std::byte> pool_concat_, pool_down_, packed_concat_, packed_down_;
  std::shared_ptr<RowSource> source_;  // null: the pools above hold the rows
  std::vector<std::uint64_t> mask_words_;     // current mask, bit r = row r active
  std::vector<std::uint64_t> scratch_words_;  // next mask, during a mask update
  std::vector<std::uint64_t> seen_words_;     // all-zero between calls; "seen" set of validate_ids
  std::vector<std::int32_t> slot_of_, row_at_;
  std::vector<std::int32_t> added_, removed_, holes_, fillers_;  // per-update scratch, size N
  std::int64_t m_ = 0;
  UpdateStats stats_;
  UpdateWork work_;
};

}  // namespace paired_replacement

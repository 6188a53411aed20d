// Standalone self-test of the header-only core csrc/paired_replacement/weight_cache.hpp.
//
// Standard library only (plus <thread>). Build and run (tests/test_core_cpp.py does this):
//
//   g++ -std=c++17 -O1 -g -Wall -Wextra -Werror -pedantic -DPAIRED_REPLACEMENT_DEBUG
//       -fsanitize=address,undefined -fno-sanitize-recover=all
//       -I csrc csrc/tests/core_selftest.cpp -o core_selftest -pthread
//   ./core_selftest
//
// Everything is checked against a naive, independent model (a std::vector<bool> mask, the
// original weight arrays and the slot-assignment rules of the header's top comment), not against
// the class's own check_invariants() (which is called as well). The program stops at the first
// failure with a message naming the check, its source line and the sequence/step it failed in,
// and exits with status 1 (2 for an unexpected exception).
//
// Sections:
//   A  randomized update sequences (random shapes, element sizes, executors, settings, tau);
//   B  executor equivalence: the same sequences under SerialFor, a reverse-order chunking
//      executor and a std::thread executor, grain {1,3,64} x par_threshold {0,5,64}, for each tau
//      in {0, 0.5, 1e9}; slot layouts must be identical;
//   C  padded-stride / alignment shapes, and the non-temporal (streaming) copy path;
//   D  bad input to update_from_indices (strong exception guarantee, "seen" scratch cleaned);
//   E  invalid Settings / Shape / constructor arguments, Settings::from_environment;
//   F  move semantics and buffer views outliving the cache;
//   G  work counters (no mask scan on index-path rebuilds at N = 2^20), an executor that throws.
// Valid updates run with SerialFor / the reverse executor are also checked to perform no heap
// allocation (invariant I6), through replacement global operator new/delete that count calls.

#include "paired_replacement/weight_cache.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <new>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace pr = paired_replacement;

// =============================================================================================
// Allocation counting (replacement global operator new/delete, all forms, over malloc/free so
// that AddressSanitizer still sees every allocation).
// =============================================================================================
namespace {
std::atomic<bool> g_count_allocs{false};
std::atomic<long> g_num_allocs{0};

void* counted_alloc(std::size_t size) {
  if (g_count_allocs.load(std::memory_order_relaxed)) g_num_allocs.fetch_add(1);
  return std::malloc(size == 0 ? 1 : size);
}
void* counted_aligned_alloc(std::size_t size, std::size_t align) {
  if (g_count_allocs.load(std::memory_order_relaxed)) g_num_allocs.fetch_add(1);
  if (align < sizeof(void*)) align = sizeof(void*);
  const std::size_t rounded = (std::max<std::size_t>(size, 1) + align - 1) / align * align;
  return std::aligned_alloc(align, rounded);
}
// Out of line so that GCC's -Wmismatched-new-delete does not see operator new's pointer reach
// free() (it is malloc'ed by counted_alloc, so the pairing is correct).
[[gnu::noinline]] void counted_free(void* p) noexcept { std::free(p); }
}  // namespace

void* operator new(std::size_t size) {
  if (void* p = counted_alloc(size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) {
  if (void* p = counted_alloc(size)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t size, const std::nothrow_t&) noexcept { return counted_alloc(size); }
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept { return counted_alloc(size); }
void* operator new(std::size_t size, std::align_val_t al) {
  if (void* p = counted_aligned_alloc(size, static_cast<std::size_t>(al))) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size, std::align_val_t al) {
  if (void* p = counted_aligned_alloc(size, static_cast<std::size_t>(al))) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t size, std::align_val_t al, const std::nothrow_t&) noexcept {
  return counted_aligned_alloc(size, static_cast<std::size_t>(al));
}
void* operator new[](std::size_t size, std::align_val_t al, const std::nothrow_t&) noexcept {
  return counted_aligned_alloc(size, static_cast<std::size_t>(al));
}
void operator delete(void* p) noexcept { counted_free(p); }
void operator delete[](void* p) noexcept { counted_free(p); }
void operator delete(void* p, std::size_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::size_t) noexcept { counted_free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { counted_free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { counted_free(p); }
void operator delete(void* p, std::align_val_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { counted_free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { counted_free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { counted_free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { counted_free(p); }

namespace {

// =============================================================================================
// Failure reporting
// =============================================================================================
std::string g_ctx = "startup";  // what is being tested right now (printed on failure)
long g_num_sequences = 0;
long g_num_updates = 0;

// What the randomized sections reached (checked at the end so that coverage cannot silently drop).
struct Coverage {
  long noop = 0, paired = 0, rebuild = 0;
  long paired_zero_writes = 0;  // R > 0 but every removed row sat in the tail: W == 0
  long paired_shrink_with_tail = 0;  // m' < m and stranded tail rows moved into holes
  long mask_updates[4] = {0, 0, 0, 0};  // by stride
  long index_updates = 0;
  long executor_calls = 0;
  long padded_row_updates = 0;  // a row stride >= 512 bytes (padded)
  long streaming_updates = 0;   // n * (concat_ld + down_ld) >= kStreamingMinBytes
  long crossed_word_boundary = 0;  // N > 128
  long rebuild_by_sort = 0, rebuild_by_scan = 0;  // how a rebuild found the ascending row order
} g_cov;

[[noreturn]] void fail_at(const std::string& msg, const char* file, int line) {
  std::fprintf(stderr, "core_selftest: FAILED (%s:%d): %s\n  while: %s\n", file, line,
               msg.c_str(), g_ctx.c_str());
  std::fflush(stderr);
  std::exit(1);
}

#define CHECK(cond, msg)                                                 \
  do {                                                                   \
    if (!(cond)) {                                                       \
      std::ostringstream check_os_;                                      \
      check_os_ << "check `" #cond "` failed: " << msg; /* NOLINT */     \
      fail_at(check_os_.str(), __FILE__, __LINE__);                      \
    }                                                                    \
  } while (0)

// Runs `stmt`; fails unless it throws exactly `Exc` (a subclass does not count for
// invalid_argument vs out_of_range, which are distinct leaves of logic_error). `what_out` gets
// the message.
#define EXPECT_THROW_EXACT(Exc, stmt, what_out)                                                  \
  do {                                                                                           \
    bool threw_ = false;                                                                         \
    try {                                                                                        \
      stmt;                                                                                      \
    } catch (const Exc& e_) {                                                                    \
      threw_ = true;                                                                             \
      (what_out) = e_.what();                                                                    \
    } catch (const std::exception& e_) {                                                         \
      fail_at(std::string("`" #stmt "` threw the wrong exception type (wanted " #Exc "): ") +   \
                  e_.what(),                                                                     \
              __FILE__, __LINE__);                                                               \
    }                                                                                            \
    if (!threw_) fail_at("`" #stmt "` did not throw " #Exc, __FILE__, __LINE__);                 \
  } while (0)

bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

std::string stats_str(const pr::UpdateStats& s) {
  std::ostringstream os;
  os << "{added=" << s.added << " removed=" << s.removed << " rows_written=" << s.rows_written
     << " m_before=" << s.m_before << " m_after=" << s.m_after << " path=" << pr::to_string(s.path)
     << "}";
  return os.str();
}

bool stats_equal(const pr::UpdateStats& a, const pr::UpdateStats& b) {
  return a.added == b.added && a.removed == b.removed && a.rows_written == b.rows_written &&
         a.m_before == b.m_before && a.m_after == b.m_after && a.path == b.path;
}

using Rng = std::mt19937_64;

std::int64_t rand_int(Rng& rng, std::int64_t lo, std::int64_t hi) {  // inclusive
  return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
}
double rand_real(Rng& rng, double lo, double hi) {
  return std::uniform_real_distribution<double>(lo, hi)(rng);
}
bool coin(Rng& rng, double p) { return std::bernoulli_distribution(p)(rng); }

// =============================================================================================
// Ground truth: the original weights, and the expected packed rows derived from them naively.
// =============================================================================================
struct Problem {
  Problem() = default;
  Problem(const Problem&) = delete;  // gate/up/down point into the vectors: move only
  Problem& operator=(const Problem&) = delete;
  Problem(Problem&&) = default;
  Problem& operator=(Problem&&) = default;

  pr::Shape shape;
  // Typed storage (only the vectors of the chosen element type are used).
  std::vector<std::uint8_t> g1, u1, d1;
  std::vector<std::uint16_t> g2, u2, d2;
  std::vector<float> g4, u4, d4;
  std::vector<std::uint64_t> g8, u8, d8;
  const void* gate = nullptr;
  const void* up = nullptr;
  const void* down = nullptr;
  // exp_concat[r] = bytes of gate[r, :] followed by up[r, :]; exp_down[r] = bytes of down[:, r].
  std::vector<std::vector<unsigned char>> exp_concat, exp_down;
  // Initial mask given to the constructor.
  std::vector<std::uint8_t> init_mask;
  std::int64_t init_stride = 1;
  std::vector<bool> init_bits;
};

template <class T>
T random_value(Rng& rng) {
  if constexpr (std::is_floating_point_v<T>)
    return static_cast<T>(rand_real(rng, -4.0, 4.0));
  else
    return static_cast<T>(rng());
}

template <class T>
void fill_weights(Problem& P, Rng& rng, std::vector<T>& g, std::vector<T>& u, std::vector<T>& d) {
  const pr::Shape& s = P.shape;
  const auto N = static_cast<std::size_t>(s.rows), G = static_cast<std::size_t>(s.gate_cols),
             U = static_cast<std::size_t>(s.up_cols), H = static_cast<std::size_t>(s.hidden);
  g.resize(N * G);
  u.resize(N * U);
  d.resize(H * N);
  for (auto& x : g) x = random_value<T>(rng);
  for (auto& x : u) x = random_value<T>(rng);
  for (auto& x : d) x = random_value<T>(rng);
  P.gate = G > 0 ? static_cast<const void*>(g.data()) : nullptr;
  P.up = u.data();
  P.down = d.data();
  P.exp_concat.assign(N, {});
  P.exp_down.assign(N, {});
  for (std::size_t r = 0; r < N; ++r) {
    auto& c = P.exp_concat[r];
    c.resize((G + U) * sizeof(T));
    for (std::size_t j = 0; j < G; ++j) std::memcpy(&c[j * sizeof(T)], &g[r * G + j], sizeof(T));
    for (std::size_t j = 0; j < U; ++j)
      std::memcpy(&c[(G + j) * sizeof(T)], &u[r * U + j], sizeof(T));
    auto& dd = P.exp_down[r];
    dd.resize(H * sizeof(T));
    for (std::size_t h = 0; h < H; ++h) std::memcpy(&dd[h * sizeof(T)], &d[h * N + r], sizeof(T));
  }
}

// A mask byte array of N entries at `stride`, exactly (N-1)*stride+1 bytes long (so that an
// over-read is caught by ASan). "On" entries get random nonzero values (1, 7, 255 or anything);
// the gap bytes between entries are random garbage, often nonzero, and must be ignored.
std::vector<std::uint8_t> encode_mask(Rng& rng, const std::vector<bool>& bits, std::int64_t stride) {
  const auto n = static_cast<std::int64_t>(bits.size());
  std::vector<std::uint8_t> buf(static_cast<std::size_t>((n - 1) * stride + 1));
  for (auto& b : buf) b = static_cast<std::uint8_t>(rng());  // gaps: garbage
  static const std::uint8_t kOn[] = {1, 7, 255, 128, 2};
  const int style = static_cast<int>(rand_int(rng, 0, 5));
  for (std::int64_t r = 0; r < n; ++r) {
    std::uint8_t v = 0;
    if (bits[static_cast<std::size_t>(r)]) {
      if (style < 5)
        v = kOn[style];
      else
        v = static_cast<std::uint8_t>(rand_int(rng, 1, 255));
    }
    buf[static_cast<std::size_t>(r * stride)] = v;
  }
  return buf;
}

std::int64_t random_stride(Rng& rng) {
  static const std::int64_t kStrides[] = {1, 1, 2, 3};
  return kStrides[rand_int(rng, 0, 3)];
}

std::vector<bool> random_bits(Rng& rng, std::int64_t n, double density) {
  std::vector<bool> b(static_cast<std::size_t>(n));
  for (std::int64_t r = 0; r < n; ++r) b[static_cast<std::size_t>(r)] = coin(rng, density);
  return b;
}

Problem make_problem(Rng& rng, const pr::Shape& shape, std::vector<bool> init_bits) {
  Problem P;
  P.shape = shape;
  switch (shape.elem_size) {
    case 1: fill_weights(P, rng, P.g1, P.u1, P.d1); break;
    case 2: fill_weights(P, rng, P.g2, P.u2, P.d2); break;
    case 4: fill_weights(P, rng, P.g4, P.u4, P.d4); break;
    default: fill_weights(P, rng, P.g8, P.u8, P.d8); break;
  }
  P.init_bits = std::move(init_bits);
  P.init_stride = random_stride(rng);
  P.init_mask = encode_mask(rng, P.init_bits, P.init_stride);
  return P;
}

// Random shape; `big` forces at least one row kind to be >= 512 bytes (padded stride).
pr::Shape random_shape(Rng& rng, bool big) {
  pr::Shape s;
  s.rows = coin(rng, 0.15) ? rand_int(rng, 1, 8) : rand_int(rng, 1, 300);
  static const std::size_t kEs[] = {2, 4, 2, 4, 2, 4, 1, 8};
  s.elem_size = kEs[rand_int(rng, 0, 7)];
  s.gate_cols = coin(rng, 0.3) ? 0 : rand_int(rng, 1, 6);
  s.up_cols = rand_int(rng, 1, 6);
  s.hidden = rand_int(rng, 1, 9);
  if (big) {
    const auto es = static_cast<std::int64_t>(s.elem_size);
    const int which = static_cast<int>(rand_int(rng, 0, 2));
    if (which != 1) {  // concat row >= 512 bytes
      const std::int64_t cols = (rand_int(rng, 512, 1100) + es - 1) / es;
      s.gate_cols = coin(rng, 0.3) ? 0 : rand_int(rng, 1, cols - 1);
      s.up_cols = cols - s.gate_cols;
    }
    if (which != 0) s.hidden = (rand_int(rng, 512, 1100) + es - 1) / es;  // down row >= 512
    s.rows = rand_int(rng, 1, 140);
  }
  return s;
}

// =============================================================================================
// Naive model of the cache: mask + slot layout by the rules of the header's top comment.
// =============================================================================================
struct Model {
  std::vector<bool> mask;
  std::vector<std::int32_t> row_at;   // slot -> row, size m
  std::vector<std::int32_t> slot_of;  // row -> slot or -1

  explicit Model(const std::vector<bool>& bits) : mask(bits), slot_of(bits.size(), -1) { rebuild(); }

  std::int64_t m() const { return static_cast<std::int64_t>(row_at.size()); }

  void rebuild() {
    row_at.clear();
    std::fill(slot_of.begin(), slot_of.end(), -1);
    for (std::size_t r = 0; r < mask.size(); ++r)
      if (mask[r]) {
        slot_of[r] = static_cast<std::int32_t>(row_at.size());
        row_at.push_back(static_cast<std::int32_t>(r));
      }
  }

  // Applies an update given as ordered added/removed lists; returns the expected stats.
  pr::UpdateStats apply(const std::vector<std::int64_t>& added,
                        const std::vector<std::int64_t>& removed, double tau) {
    const std::int64_t m_old = m();
    const auto A = static_cast<std::int64_t>(added.size());
    const auto R = static_cast<std::int64_t>(removed.size());
    const std::int64_t m_new = m_old - R + A;
    if (A == 0 && R == 0) return pr::UpdateStats{0, 0, 0, m_old, m_old, pr::UpdatePath::kNoop};
    std::vector<std::int32_t> holes;
    std::int64_t h = 0;
    for (std::int64_t r : removed) {
      const std::int32_t s = slot_of[static_cast<std::size_t>(r)];
      CHECK(s >= 0, "model: removed row " << r << " is not active");
      if (s < m_new) {
        holes.push_back(s);
        ++h;
      }
    }
    for (std::int64_t s = m_old; s < m_new; ++s) holes.push_back(static_cast<std::int32_t>(s));
    const auto W = static_cast<std::int64_t>(holes.size());
    CHECK(W == std::max(A, h), "model self-check: #holes " << W << " != max(A,h) " << std::max(A, h));
    for (std::int64_t r : added) {
      CHECK(!mask[static_cast<std::size_t>(r)], "model: added row " << r << " already active");
      mask[static_cast<std::size_t>(r)] = true;
    }
    for (std::int64_t r : removed) mask[static_cast<std::size_t>(r)] = false;

    if (static_cast<double>(W) > tau * static_cast<double>(m_new)) {
      rebuild();
      CHECK(m() == m_new, "model self-check");
      return pr::UpdateStats{A, R, m_new, m_old, m_new, pr::UpdatePath::kRebuild};
    }
    for (std::int64_t r : removed) slot_of[static_cast<std::size_t>(r)] = -1;
    std::vector<std::int32_t> fillers(added.begin(), added.end());
    for (std::int64_t s = m_new; s < m_old; ++s) {
      const std::int32_t r = row_at[static_cast<std::size_t>(s)];
      if (mask[static_cast<std::size_t>(r)]) fillers.push_back(r);  // kept row stranded in the tail
    }
    CHECK(fillers.size() == holes.size(), "model self-check: fillers != holes");
    row_at.resize(static_cast<std::size_t>(std::max(m_old, m_new)), -1);
    for (std::size_t i = 0; i < holes.size(); ++i) {
      row_at[static_cast<std::size_t>(holes[i])] = fillers[i];
      slot_of[static_cast<std::size_t>(fillers[i])] = holes[i];
    }
    row_at.resize(static_cast<std::size_t>(m_new));
    return pr::UpdateStats{A, R, W, m_old, m_new, pr::UpdatePath::kPaired};
  }
};

// =============================================================================================
// Checking a cache against the model.
// =============================================================================================
void check_alignment(const pr::WeightCache& c) {
  const std::shared_ptr<std::byte>* bufs[] = {&c.packed_concat(), &c.packed_down(), &c.pool_concat(),
                                              &c.pool_down()};
  for (const auto* b : bufs) {
    if (c.row_source() && (b == &c.pool_concat() || b == &c.pool_down())) {
      CHECK(b->get() == nullptr, "a cache on a RowSource holds a pool in memory");
      continue;
    }
    CHECK(b->get() != nullptr, "buffer is null");
    CHECK(reinterpret_cast<std::uintptr_t>(b->get()) % 64 == 0,
          "buffer " << static_cast<const void*>(b->get()) << " is not 64-byte aligned");
  }
  const pr::Shape& s = c.shape();
  const std::size_t row_bytes[] = {static_cast<std::size_t>(s.gate_cols + s.up_cols) * s.elem_size,
                                   static_cast<std::size_t>(s.hidden) * s.elem_size};
  const std::size_t lds[] = {c.concat_ld_bytes(), c.down_ld_bytes()};
  for (int k = 0; k < 2; ++k) {
    if (row_bytes[k] >= 512) {
      CHECK(lds[k] % 64 == 0, "row of " << row_bytes[k] << " bytes has ld " << lds[k] << " (not % 64)");
      CHECK(lds[k] >= row_bytes[k] && lds[k] < row_bytes[k] + 64,
            "row of " << row_bytes[k] << " bytes has ld " << lds[k] << " (not minimal padding)");
    } else {
      CHECK(lds[k] == row_bytes[k], "row of " << row_bytes[k] << " bytes (< 512) has ld " << lds[k]);
    }
  }
}

bool all_zero(const std::byte* p, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i)
    if (p[i] != std::byte{0}) return false;
  return true;
}

void check_pools(const pr::WeightCache& c, const Problem& P) {
  const std::size_t lc = c.concat_ld_bytes(), ld = c.down_ld_bytes();
  for (std::int64_t r = 0; r < P.shape.rows; ++r) {
    const auto& ec = P.exp_concat[static_cast<std::size_t>(r)];
    const auto& ed = P.exp_down[static_cast<std::size_t>(r)];
    const std::byte* pc = c.pool_concat().get() + static_cast<std::size_t>(r) * lc;
    const std::byte* pd = c.pool_down().get() + static_cast<std::size_t>(r) * ld;
    CHECK(std::memcmp(pc, ec.data(), ec.size()) == 0, "pool concat row " << r << " != gate|up");
    CHECK(all_zero(pc + ec.size(), lc - ec.size()), "pool concat row " << r << " padding not zero");
    CHECK(std::memcmp(pd, ed.data(), ed.size()) == 0, "pool down row " << r << " != down column");
    CHECK(all_zero(pd + ed.size(), ld - ed.size()), "pool down row " << r << " padding not zero");
  }
}

// The full independent check of a cache against the model (and the original weights).
void verify(const pr::WeightCache& c, const Model& M, const Problem& P) {
  const std::int64_t N = P.shape.rows;
  const std::int64_t pop = std::count(M.mask.begin(), M.mask.end(), true);
  CHECK(c.rows() == N, "rows()");
  CHECK(c.num_active() == pop, "num_active " << c.num_active() << " != popcount " << pop);
  CHECK(M.m() == pop, "model self-check");
  const std::int64_t m = pop;
  // Bijection active_rows[0,m) <-> active rows, consistent with slot_of and is_active.
  std::vector<char> seen(static_cast<std::size_t>(N), 0);
  for (std::int64_t s = 0; s < m; ++s) {
    const std::int32_t r = c.active_rows()[s];
    CHECK(r >= 0 && r < N, "active_rows[" << s << "] = " << r << " out of range");
    CHECK(!seen[static_cast<std::size_t>(r)], "row " << r << " appears twice in active_rows");
    seen[static_cast<std::size_t>(r)] = 1;
    CHECK(M.mask[static_cast<std::size_t>(r)], "active_rows[" << s << "] = " << r << " is not in the mask");
    CHECK(c.slot_of(r) == s, "slot_of(" << r << ") = " << c.slot_of(r) << " but active_rows[" << s << "] = " << r);
  }
  for (std::int64_t r = 0; r < N; ++r) {
    const bool on = M.mask[static_cast<std::size_t>(r)];
    CHECK(c.is_active(r) == on, "is_active(" << r << ") = " << c.is_active(r) << ", mask says " << on);
    if (on)
      CHECK(c.slot_of(r) >= 0 && c.slot_of(r) < m, "active row " << r << " has slot " << c.slot_of(r));
    else
      CHECK(c.slot_of(r) == -1, "inactive row " << r << " has slot " << c.slot_of(r));
  }
  // Exact slot layout by the documented deterministic rules.
  for (std::int64_t s = 0; s < m; ++s)
    CHECK(c.active_rows()[s] == M.row_at[static_cast<std::size_t>(s)],
          "slot " << s << " holds row " << c.active_rows()[s] << ", the slot-assignment rules say "
                  << M.row_at[static_cast<std::size_t>(s)]);
  // Packed bytes vs the ORIGINAL weights.
  const std::size_t lc = c.concat_ld_bytes(), ld = c.down_ld_bytes();
  for (std::int64_t s = 0; s < m; ++s) {
    const auto r = static_cast<std::size_t>(c.active_rows()[s]);
    const auto& ec = P.exp_concat[r];
    const auto& ed = P.exp_down[r];
    const std::byte* pc = c.packed_concat().get() + static_cast<std::size_t>(s) * lc;
    const std::byte* pd = c.packed_down().get() + static_cast<std::size_t>(s) * ld;
    CHECK(std::memcmp(pc, ec.data(), ec.size()) == 0,
          "packed concat slot " << s << " != gate[" << r << "]|up[" << r << "]");
    CHECK(all_zero(pc + ec.size(), lc - ec.size()), "packed concat slot " << s << " padding not zero");
    CHECK(std::memcmp(pd, ed.data(), ed.size()) == 0, "packed down slot " << s << " != down[:, " << r << "]");
    CHECK(all_zero(pd + ed.size(), ld - ed.size()), "packed down slot " << s << " padding not zero");
  }
  check_alignment(c);
  try {
    c.check_invariants();
  } catch (const std::exception& e) {
    CHECK(false, "check_invariants() threw: " << e.what());
  }
}

// =============================================================================================
// Executors
// =============================================================================================
struct CallLog {
  long calls = 0;
  std::int64_t begin = -1, end = -1, grain = -1;
  std::atomic<long> bodies{0};  // body calls made by the executor (from any thread)
};

// Splits [begin, end) into grain-sized chunks and runs them in reverse order on this thread.
struct ReverseChunks {
  CallLog* log;
  template <class Body>
  void operator()(std::int64_t begin, std::int64_t end, std::int64_t grain, const Body& body) const {
    ++log->calls;
    log->begin = begin;
    log->end = end;
    log->grain = grain;
    CHECK(grain >= 1, "executor got grain " << grain);
    if (begin >= end) return;
    const std::int64_t num_chunks = (end - begin + grain - 1) / grain;
    for (std::int64_t k = num_chunks - 1; k >= 0; --k) {
      const std::int64_t b = begin + k * grain;
      body(b, std::min(end, b + grain));
      ++log->bodies;
    }
  }
};

// Runs grain-sized chunks on up to 3 std::threads (chunk k on thread k % T).
struct ThreadChunks {
  CallLog* log;
  template <class Body>
  void operator()(std::int64_t begin, std::int64_t end, std::int64_t grain, const Body& body) const {
    ++log->calls;
    log->begin = begin;
    log->end = end;
    log->grain = grain;
    CHECK(grain >= 1, "executor got grain " << grain);
    if (begin >= end) return;
    const std::int64_t num_chunks = (end - begin + grain - 1) / grain;
    const std::int64_t T = std::min<std::int64_t>(num_chunks, 3);
    std::vector<std::thread> threads;
    threads.reserve(static_cast<std::size_t>(T));
    for (std::int64_t t = 0; t < T; ++t)
      threads.emplace_back([=, &body] {
        for (std::int64_t k = t; k < num_chunks; k += T) {
          const std::int64_t b = begin + k * grain;
          body(b, std::min(end, b + grain));
          ++log->bodies;
        }
      });
    for (auto& th : threads) th.join();
  }
};

enum class Exec { kSerial = 0, kReverse = 1, kThreads = 2 };
const char* exec_name(Exec e) {
  switch (e) {
    case Exec::kSerial: return "SerialFor";
    case Exec::kReverse: return "ReverseChunks";
    case Exec::kThreads: return "ThreadChunks";
  }
  return "?";
}

template <class F>
void with_executor(Exec e, CallLog* log, F&& f) {
  switch (e) {
    case Exec::kSerial: f(pr::SerialFor{}); break;
    case Exec::kReverse: f(ReverseChunks{log}); break;
    case Exec::kThreads: f(ThreadChunks{log}); break;
  }
}

// =============================================================================================
// Update sequences
// =============================================================================================
struct Op {
  enum Kind { kMask, kIndices, kSetTau } kind = kMask;
  const char* pattern = "";
  std::vector<std::uint8_t> mask_buf;  // kMask
  std::int64_t stride = 1;             // kMask
  // kIndices: the lists passed (random order). kMask: the diff in ascending row order, which is
  // the order the header documents for mask updates.
  std::vector<std::int64_t> added, removed;
  double tau = 0.5;  // kSetTau
};

std::vector<std::int64_t> rows_where(const std::vector<bool>& a, bool val) {
  std::vector<std::int64_t> out;
  for (std::size_t r = 0; r < a.size(); ++r)
    if (a[r] == val) out.push_back(static_cast<std::int64_t>(r));
  return out;
}

// Appends the op that takes `cur` to `next` (by mask or by indices, randomly), and sets cur=next.
void push_transition(Rng& rng, std::vector<Op>& ops, std::vector<bool>& cur,
                     const std::vector<bool>& next, const char* pattern) {
  Op op;
  op.pattern = pattern;
  for (std::size_t r = 0; r < cur.size(); ++r) {
    if (!cur[r] && next[r]) op.added.push_back(static_cast<std::int64_t>(r));
    if (cur[r] && !next[r]) op.removed.push_back(static_cast<std::int64_t>(r));
  }
  if (coin(rng, 0.55)) {
    op.kind = Op::kMask;
    op.stride = random_stride(rng);
    op.mask_buf = encode_mask(rng, next, op.stride);
  } else {
    op.kind = Op::kIndices;
    if (coin(rng, 0.8)) {  // random order (the order defines slot assignment)
      std::shuffle(op.added.begin(), op.added.end(), rng);
      std::shuffle(op.removed.begin(), op.removed.end(), rng);
    }
  }
  ops.push_back(std::move(op));
  cur = next;
}

// Picks k distinct random elements of v.
std::vector<std::int64_t> pick(Rng& rng, std::vector<std::int64_t> v, std::int64_t k) {
  std::shuffle(v.begin(), v.end(), rng);
  v.resize(static_cast<std::size_t>(std::min<std::int64_t>(k, static_cast<std::int64_t>(v.size()))));
  return v;
}

std::vector<Op> make_ops(Rng& rng, std::vector<bool> cur, int count, bool allow_tau_changes) {
  const auto n = static_cast<std::int64_t>(cur.size());
  std::vector<Op> ops;
  while (static_cast<int>(ops.size()) < count) {
    const int p = static_cast<int>(rand_int(rng, 0, 12));
    std::vector<bool> next = cur;
    switch (p) {
      case 0:
      case 1: {  // small churn (possibly unbalanced)
        const auto on = rows_where(cur, true), off = rows_where(cur, false);
        for (auto r : pick(rng, on, rand_int(rng, 0, 3))) next[static_cast<std::size_t>(r)] = false;
        for (auto r : pick(rng, off, rand_int(rng, 0, 3))) next[static_cast<std::size_t>(r)] = true;
        push_transition(rng, ops, cur, next, "small churn");
        break;
      }
      case 2: {  // medium churn around a target density
        const double keep = rand_real(rng, 0.5, 1.0), add = rand_real(rng, 0.0, 0.3);
        for (std::size_t r = 0; r < next.size(); ++r) next[r] = cur[r] ? coin(rng, keep) : coin(rng, add);
        push_transition(rng, ops, cur, next, "medium churn");
        break;
      }
      case 3:
      case 4:  // large churn: a fresh random mask
        next = random_bits(rng, n, rand_real(rng, 0.0, 1.0));
        push_transition(rng, ops, cur, next, "large churn");
        break;
      case 5:
        next.assign(next.size(), false);
        push_transition(rng, ops, cur, next, "empty");
        break;
      case 6:
        next.assign(next.size(), true);
        push_transition(rng, ops, cur, next, "full");
        break;
      case 7:
        push_transition(rng, ops, cur, next, "unchanged");
        break;
      case 8:
        next.flip();
        push_transition(rng, ops, cur, next, "all swapped");
        break;
      case 9: {  // grow 0 -> N in chunks, then shrink back to 0
        next.assign(next.size(), false);
        push_transition(rng, ops, cur, next, "grow: to empty");
        const std::int64_t lo = std::max<std::int64_t>(1, n / 10), hi = std::max<std::int64_t>(1, n / 3);
        for (;;) {
          const auto off = rows_where(cur, false);
          if (off.empty()) break;
          for (auto r : pick(rng, off, rand_int(rng, lo, hi))) next[static_cast<std::size_t>(r)] = true;
          push_transition(rng, ops, cur, next, "grow");
        }
        for (;;) {
          const auto on = rows_where(cur, true);
          if (on.empty()) break;
          for (auto r : pick(rng, on, rand_int(rng, lo, hi))) next[static_cast<std::size_t>(r)] = false;
          push_transition(rng, ops, cur, next, "shrink");
        }
        break;
      }
      case 10: {  // drop the highest active ids (after a rebuild they sit in the tail: W == 0)
        auto on = rows_where(cur, true);
        const std::int64_t k = rand_int(rng, 0, static_cast<std::int64_t>(on.size()));
        for (std::int64_t i = 0; i < k; ++i) next[static_cast<std::size_t>(on[on.size() - 1 - static_cast<std::size_t>(i)])] = false;
        push_transition(rng, ops, cur, next, "drop highest ids");
        break;
      }
      case 11: {  // swap k active for k inactive (m' == m)
        const auto on = rows_where(cur, true), off = rows_where(cur, false);
        const std::int64_t k = rand_int(rng, 0, std::min<std::int64_t>(static_cast<std::int64_t>(on.size()), static_cast<std::int64_t>(off.size())));
        for (auto r : pick(rng, on, k)) next[static_cast<std::size_t>(r)] = false;
        for (auto r : pick(rng, off, k)) next[static_cast<std::size_t>(r)] = true;
        push_transition(rng, ops, cur, next, "balanced swap");
        break;
      }
      default:
        if (allow_tau_changes) {
          Op op;
          op.kind = Op::kSetTau;
          op.pattern = "set tau";
          static const double kTaus[] = {0.0, 0.5, 1e9, 0.25, 1.0};
          op.tau = coin(rng, 0.5) ? kTaus[rand_int(rng, 0, 4)] : rand_real(rng, 0.0, 1.5);
          ops.push_back(std::move(op));
        }
        break;
    }
  }
  return ops;
}

struct Trace {
  std::vector<std::vector<std::int32_t>> rows;  // active_rows prefix after each step
  std::vector<pr::UpdateStats> stats;
};

std::string describe_shape(const pr::Shape& s) {
  std::ostringstream os;
  os << "N=" << s.rows << " G=" << s.gate_cols << " U=" << s.up_cols << " H=" << s.hidden
     << " es=" << s.elem_size;
  return os.str();
}

// Runs `ops` on a fresh cache built from P with executor `ex` and `settings`, checking everything
// against the model after every step. Returns the trace of layouts and stats.
Trace run_sequence(const Problem& P, const std::vector<Op>& ops, Exec ex, pr::Settings settings,
                   const std::string& label) {
  ++g_num_sequences;
  std::ostringstream base;
  base << label << " [" << describe_shape(P.shape) << ", executor=" << exec_name(ex)
       << ", grain=" << settings.grain << ", par_threshold=" << settings.par_threshold
       << ", tau=" << settings.hybrid_tau_frac << "]";
  g_ctx = base.str() + " construction";

  pr::WeightCache cache(P.shape, P.gate, P.up, P.down, P.init_mask.data(), P.init_stride, settings);
  Model M(P.init_bits);
  check_pools(cache, P);
  verify(cache, M, P);
  {
    const std::int64_t m = M.m();
    CHECK(stats_equal(cache.last_update_stats(), pr::UpdateStats{m, 0, m, 0, m, pr::UpdatePath::kRebuild}),
          "constructor stats " << stats_str(cache.last_update_stats()));
  }
  Trace trace;
  CallLog log;
  const std::int64_t N = P.shape.rows;
  for (std::size_t step = 0; step < ops.size(); ++step) {
    const Op& op = ops[step];
    {
      std::ostringstream os;
      os << base.str() << " step " << step << " (" << op.pattern << ", "
         << (op.kind == Op::kMask ? "update_from_mask stride " + std::to_string(op.stride)
                                  : op.kind == Op::kIndices ? std::string("update_from_indices")
                                                            : std::string("set_settings"))
         << ", A=" << op.added.size() << " R=" << op.removed.size() << ")";
      g_ctx = os.str();
    }
    if (op.kind == Op::kSetTau) {
      settings.hybrid_tau_frac = op.tau;
      cache.set_settings(settings);
      CHECK(cache.settings().hybrid_tau_frac == op.tau, "set_settings did not take");
      continue;
    }
    ++g_num_updates;
    const std::int64_t m_old = cache.num_active();
    const auto A = static_cast<std::int64_t>(op.added.size());
    const auto R = static_cast<std::int64_t>(op.removed.size());
    const std::int64_t m_new = m_old - R + A;
    // h from the cache's own slot_of before the update.
    std::int64_t h = 0;
    for (std::int64_t r : op.removed)
      if (cache.slot_of(r) < m_new) ++h;
    const pr::UpdateStats expect = M.apply(op.added, op.removed, settings.hybrid_tau_frac);
    const long calls_before = log.calls;
    const long bodies_before = log.bodies.load();

    g_num_allocs.store(0);
    g_count_allocs.store(ex != Exec::kThreads);  // std::thread itself allocates
    with_executor(ex, &log, [&](const auto& pf) {
      if (op.kind == Op::kMask)
        cache.update_from_mask(op.mask_buf.data(), op.stride, pf);
      else
        cache.update_from_indices(op.added.data(), A, op.removed.data(), R, pf);
    });
    g_count_allocs.store(false);
    CHECK(g_num_allocs.load() == 0, g_num_allocs.load() << " heap allocation(s) during an update (I6)");

    const pr::UpdateStats& st = cache.last_update_stats();
    CHECK(st.added == A, "stats.added " << st.added << " != " << A);
    CHECK(st.removed == R, "stats.removed " << st.removed << " != " << R);
    CHECK(st.m_before == m_old && st.m_after == m_new, "stats m_before/m_after " << stats_str(st));
    if (A == 0 && R == 0) {
      CHECK(st.path == pr::UpdatePath::kNoop && st.rows_written == 0, "unchanged mask: " << stats_str(st));
    } else {
      const std::int64_t W = std::max(A, h);
      const bool rebuild = static_cast<double>(W) > settings.hybrid_tau_frac * static_cast<double>(m_new);
      if (rebuild)
        CHECK(st.path == pr::UpdatePath::kRebuild && st.rows_written == m_new,
              "expected rebuild (max(A,h)=" << W << " > tau*m'), got " << stats_str(st));
      else
        CHECK(st.path == pr::UpdatePath::kPaired && st.rows_written == W,
              "expected paired with W=max(A,h)=" << W << " (h=" << h << "), got " << stats_str(st));
    }
    CHECK(stats_equal(st, expect), "stats " << stats_str(st) << " != model " << stats_str(expect));
    switch (st.path) {
      case pr::UpdatePath::kNoop: ++g_cov.noop; break;
      case pr::UpdatePath::kPaired: ++g_cov.paired; break;
      case pr::UpdatePath::kRebuild: ++g_cov.rebuild; break;
    }
    if (st.path == pr::UpdatePath::kPaired && R > 0 && st.rows_written == 0) ++g_cov.paired_zero_writes;
    if (st.path == pr::UpdatePath::kPaired && m_new < m_old && st.rows_written > A) ++g_cov.paired_shrink_with_tail;
    if (op.kind == Op::kMask)
      ++g_cov.mask_updates[op.stride];
    else
      ++g_cov.index_updates;
    if (cache.concat_ld_bytes() >= 512 || cache.down_ld_bytes() >= 512) ++g_cov.padded_row_updates;
    if (N > 128) ++g_cov.crossed_word_boundary;
    if (static_cast<std::size_t>(st.rows_written) * (cache.concat_ld_bytes() + cache.down_ld_bytes()) >=
        pr::kStreamingMinBytes)
      ++g_cov.streaming_updates;
    g_cov.executor_calls += log.calls - calls_before;
    // The executor is used iff the copy count n > 0 and n >= par_threshold, with the settings' grain.
    if (ex != Exec::kSerial) {
      const std::int64_t n = st.rows_written;
      const bool want_call = n > 0 && n >= settings.par_threshold;
      CHECK(log.calls - calls_before == (want_call ? 1 : 0),
            "executor called " << (log.calls - calls_before) << " times for n=" << n
                               << " rows, par_threshold=" << settings.par_threshold);
      if (want_call)
        CHECK(log.begin == 0 && log.end == n && log.grain == settings.grain,
              "executor got [" << log.begin << ", " << log.end << ") grain " << log.grain);
    }
    // Work counters: mask words read (the diff of a mask update, plus the scan of a rebuild that
    // orders by scanning, which it does unless sorting the held rows is cheaper — never on an
    // index update at small m', whatever N), and one copy task per body call.
    {
      const pr::UpdateWork& work = cache.last_update_work();
      const auto num_words = (N + 63) / 64;
      const bool by_sort = m_old + m_new * pr::detail::ceil_log2(m_new + 1) < num_words;
      const std::int64_t scanned = (op.kind == Op::kMask ? num_words : 0) +
                                   (st.path == pr::UpdatePath::kRebuild && !by_sort ? num_words : 0);
      CHECK(work.mask_words_scanned == scanned,
            "mask_words_scanned " << work.mask_words_scanned << ", expected " << scanned);
      if (st.path == pr::UpdatePath::kRebuild) ++(by_sort ? g_cov.rebuild_by_sort : g_cov.rebuild_by_scan);
      const std::int64_t n = st.rows_written;
      const bool via_executor = ex != Exec::kSerial && n > 0 && n >= settings.par_threshold;
      const long tasks = via_executor ? log.bodies.load() - bodies_before : (n > 0 ? 1 : 0);
      CHECK(work.copy_tasks == tasks, "copy_tasks " << work.copy_tasks << ", expected " << tasks);
    }
    verify(cache, M, P);
    trace.rows.emplace_back(cache.active_rows(), cache.active_rows() + cache.num_active());
    trace.stats.push_back(st);
  }
  return trace;
}

void compare_traces(const Trace& ref, const Trace& got, const std::string& what) {
  CHECK(ref.rows.size() == got.rows.size(), what << ": different number of steps");
  for (std::size_t i = 0; i < ref.rows.size(); ++i) {
    CHECK(ref.rows[i] == got.rows[i], what << ": active_rows differ from SerialFor at step " << i);
    CHECK(stats_equal(ref.stats[i], got.stats[i]),
          what << ": stats differ at step " << i << ": " << stats_str(got.stats[i]) << " vs SerialFor "
               << stats_str(ref.stats[i]));
  }
}

// =============================================================================================
// A. Randomized sequences
// =============================================================================================
void section_random(int num_seeds) {
  for (int seed = 0; seed < num_seeds; ++seed) {
    Rng rng(0x9E3779B97F4A7C15ULL ^ static_cast<std::uint64_t>(seed));
    const bool big = seed % 12 == 5;
    const pr::Shape shape = random_shape(rng, big);
    const double d0 = coin(rng, 0.2) ? (coin(rng, 0.5) ? 0.0 : 1.0) : rand_real(rng, 0.0, 1.0);
    Problem P = make_problem(rng, shape, random_bits(rng, shape.rows, d0));
    pr::Settings s;
    static const std::int64_t kGrains[] = {1, 3, 64};
    static const std::int64_t kPars[] = {0, 5, 64};
    static const double kTaus[] = {0.0, 0.5, 1e9};
    s.grain = coin(rng, 0.75) ? kGrains[rand_int(rng, 0, 2)] : rand_int(rng, 1, 100);
    s.par_threshold = coin(rng, 0.75) ? kPars[rand_int(rng, 0, 2)] : rand_int(rng, 0, 100);
    s.hybrid_tau_frac = coin(rng, 0.75) ? kTaus[rand_int(rng, 0, 2)] : rand_real(rng, 0.0, 1.5);
    const auto ex = static_cast<Exec>(rand_int(rng, 0, 2));
    const int len = big ? 12 : static_cast<int>(rand_int(rng, 20, 45));
    const auto ops = make_ops(rng, P.init_bits, len, /*allow_tau_changes=*/true);
    run_sequence(P, ops, ex, s, "A random seed " + std::to_string(seed));
  }
}

// =============================================================================================
// B. Executor equivalence
// =============================================================================================
void section_executors(int num_seeds) {
  for (int seed = 0; seed < num_seeds; ++seed) {
    Rng rng(0xB0B0B0B0ULL + static_cast<std::uint64_t>(seed) * 7919);
    pr::Shape shape = random_shape(rng, seed == 3);
    if (seed == 0) shape.rows = 300;  // crosses two word boundaries
    Problem P = make_problem(rng, shape, random_bits(rng, shape.rows, rand_real(rng, 0.0, 1.0)));
    const auto ops = make_ops(rng, P.init_bits, seed == 3 ? 8 : 16, /*allow_tau_changes=*/false);
    for (double tau : {0.0, 0.5, 1e9}) {
      pr::Settings ref_s;
      ref_s.hybrid_tau_frac = tau;
      const std::string label = "B executors seed " + std::to_string(seed);
      const Trace ref = run_sequence(P, ops, Exec::kSerial, ref_s, label);
      for (Exec ex : {Exec::kSerial, Exec::kReverse, Exec::kThreads})
        for (std::int64_t grain : {1, 3, 64})
          for (std::int64_t par : {0, 5, 64}) {
            pr::Settings s;
            s.grain = grain;
            s.par_threshold = par;
            s.hybrid_tau_frac = tau;
            const Trace got = run_sequence(P, ops, ex, s, label);
            compare_traces(ref, got, g_ctx);
          }
    }
  }
}

// =============================================================================================
// C. Padded strides, alignment, streaming copies
// =============================================================================================
void section_padding_and_streaming() {
  Rng rng(424242);
  // Row byte sizes just below, at and above kPadMinRowBytes (512), for both buffers.
  struct Case { std::int64_t G, U, H; std::size_t es; };
  const Case cases[] = {
      {0, 255, 255, 2},  // 510 bytes: unpadded
      {0, 128, 128, 4},  // 512: padded stride == 512
      {1, 128, 129, 4},  // 516: padded to 576
      {3, 254, 257, 2},  // 514: padded to 576
      {64, 65, 64, 8},   // 1032 / 512
      {500, 100, 700, 1},
      {0, 1, 600, 1},    // tiny concat, padded down
  };
  int k = 0;
  for (const Case& c : cases) {
    pr::Shape s;
    s.rows = (k % 2 == 0) ? 130 : 67;
    s.gate_cols = c.G;
    s.up_cols = c.U;
    s.hidden = c.H;
    s.elem_size = c.es;
    Problem P = make_problem(rng, s, random_bits(rng, s.rows, 0.4));
    const auto ops = make_ops(rng, P.init_bits, 10, true);
    pr::Settings st;
    st.grain = 3;
    st.par_threshold = 0;
    st.hybrid_tau_frac = (k % 3 == 0) ? 1e9 : 0.5;
    run_sequence(P, ops, static_cast<Exec>(k % 3), st, "C padded case " + std::to_string(k));
    ++k;
  }

  // Streaming: W * (concat_ld + down_ld) >= 8 MiB uses non-temporal stores (x86). Rows of 32 KiB
  // per buffer, N = 160: filling 128+ slots at once crosses the threshold.
  pr::Shape s;
  s.rows = 160;
  s.gate_cols = 4096;
  s.up_cols = 4096;
  s.hidden = 8192;
  s.elem_size = 4;
  Problem P = make_problem(rng, s, std::vector<bool>(160, false));
  std::vector<Op> ops;
  std::vector<bool> cur(160, false), next(160, true);
  push_transition(rng, ops, cur, next, "stream: fill all 160");  // paired W = 160 (tau 1e9)
  next.assign(160, false);
  for (int r = 0; r < 160; r += 2) next[static_cast<std::size_t>(r)] = true;
  push_transition(rng, ops, cur, next, "stream: drop odd");
  next.flip();
  push_transition(rng, ops, cur, next, "stream: swap all");
  next.assign(160, true);
  push_transition(rng, ops, cur, next, "stream: full again");
  for (Exec ex : {Exec::kSerial, Exec::kThreads}) {
    pr::Settings st;
    st.grain = 16;
    st.par_threshold = 0;
    st.hybrid_tau_frac = 1e9;
    run_sequence(P, ops, ex, st, "C streaming");
    st.hybrid_tau_frac = 0.0;  // every change rebuilds all m' rows
    run_sequence(P, ops, ex, st, "C streaming rebuild");
  }
}

// =============================================================================================
// D. Bad input to update_from_indices
// =============================================================================================
struct Snapshot {
  std::int64_t m = 0;
  std::vector<std::int32_t> rows;
  std::vector<std::int32_t> slots;
  std::vector<char> active;
  std::vector<std::byte> concat, down;
  pr::UpdateStats stats;
  pr::Settings settings;
};

Snapshot snapshot(const pr::WeightCache& c) {
  Snapshot s;
  s.m = c.num_active();
  s.rows.assign(c.active_rows(), c.active_rows() + s.m);
  for (std::int64_t r = 0; r < c.rows(); ++r) {
    s.slots.push_back(c.slot_of(r));
    s.active.push_back(c.is_active(r) ? 1 : 0);
  }
  const auto m = static_cast<std::size_t>(s.m);
  s.concat.assign(c.packed_concat().get(), c.packed_concat().get() + m * c.concat_ld_bytes());
  s.down.assign(c.packed_down().get(), c.packed_down().get() + m * c.down_ld_bytes());
  s.stats = c.last_update_stats();
  s.settings = c.settings();
  return s;
}

void expect_unchanged(const Snapshot& a, const pr::WeightCache& c) {
  const Snapshot b = snapshot(c);
  CHECK(a.m == b.m, "num_active changed after a throw: " << a.m << " -> " << b.m);
  CHECK(a.rows == b.rows, "active_rows changed after a throw");
  CHECK(a.slots == b.slots, "slot_of changed after a throw");
  CHECK(a.active == b.active, "is_active changed after a throw");
  CHECK(a.concat == b.concat, "packed concat bytes changed after a throw");
  CHECK(a.down == b.down, "packed down bytes changed after a throw");
  CHECK(stats_equal(a.stats, b.stats), "last_update_stats changed after a throw: " << stats_str(a.stats) << " -> " << stats_str(b.stats));
  CHECK(a.settings.grain == b.settings.grain && a.settings.par_threshold == b.settings.par_threshold &&
            std::memcmp(&a.settings.hybrid_tau_frac, &b.settings.hybrid_tau_frac, sizeof(double)) == 0,
        "settings changed after a throw");
  try {
    c.check_invariants();
  } catch (const std::exception& e) {
    CHECK(false, "check_invariants() after a throw: " << e.what());
  }
}

// A cache + model pair for the bad-input tests, with a helper to do a checked valid update.
struct Harness {
  Problem P;
  Model M;
  pr::WeightCache cache;
  double tau;
  Harness(Problem p, const pr::Settings& s)
      : P(std::move(p)), M(P.init_bits),
        cache(P.shape, P.gate, P.up, P.down, P.init_mask.data(), P.init_stride, s), tau(s.hybrid_tau_frac) {}

  void valid(const std::vector<std::int64_t>& added, const std::vector<std::int64_t>& removed) {
    ++g_num_updates;
    const pr::UpdateStats expect = M.apply(added, removed, tau);
    cache.update_from_indices(added.data(), static_cast<std::int64_t>(added.size()), removed.data(),
                              static_cast<std::int64_t>(removed.size()));
    CHECK(stats_equal(cache.last_update_stats(), expect),
          "stats " << stats_str(cache.last_update_stats()) << " != model " << stats_str(expect));
    verify(cache, M, P);
  }
};

void section_bad_input() {
  ++g_num_sequences;
  Rng rng(777);
  pr::Shape shape;
  shape.rows = 150;
  shape.gate_cols = 3;
  shape.up_cols = 5;
  shape.hidden = 7;
  shape.elem_size = 4;
  Problem P = make_problem(rng, shape, random_bits(rng, 150, 0.5));
  pr::Settings s;
  s.hybrid_tau_frac = 1e9;  // keep the paired path, so that slots are scattered
  Harness hz(std::move(P), s);
  pr::WeightCache& c = hz.cache;
  const std::int64_t N = shape.rows;
  // A few churn updates first so the layout is not sorted.
  for (int i = 0; i < 5; ++i) {
    auto on = rows_where(hz.M.mask, true), off = rows_where(hz.M.mask, false);
    hz.valid(pick(rng, off, 9), pick(rng, on, 7));
  }

  const auto inactive = [&] { return pick(rng, rows_where(hz.M.mask, false), 1000); };
  const auto active = [&] { return pick(rng, rows_where(hz.M.mask, true), 1000); };
  std::string what;
  using V = std::vector<std::int64_t>;
  const auto call = [&](const V& a, const V& r) {
    c.update_from_indices(a.data(), static_cast<std::int64_t>(a.size()), r.data(),
                          static_cast<std::int64_t>(r.size()));
  };
  const std::int64_t kBig = std::numeric_limits<std::int64_t>::max();
  const std::int64_t kSmall = std::numeric_limits<std::int64_t>::min();

  for (int round = 0; round < 3; ++round) {
    const V off = inactive(), on = active();
    CHECK(off.size() >= 6 && on.size() >= 6, "bad-input setup needs >= 6 active and inactive rows");
    const Snapshot snap = snapshot(c);
    struct BadCase {
      const char* name;
      V added, removed;
      bool out_of_range;
      const char* list;  // which list the message must name
    };
    const std::vector<BadCase> cases = {
        {"added id == N", {N}, {}, true, "added"},
        {"added id -1", {-1}, {}, true, "added"},
        {"added id INT64_MAX", {kBig}, {}, true, "added"},
        {"added id INT64_MIN", {kSmall}, {}, true, "added"},
        {"removed id == N", {}, {N}, true, "removed"},
        {"removed id -7", {off[0]}, {on[0], -7}, true, "removed"},
        {"added duplicate", {off[0], off[0]}, {}, false, "added"},
        {"removed duplicate", {}, {on[0], on[1], on[0]}, false, "removed"},
        {"added already active", {on[2]}, {}, false, "added"},
        {"removed not active", {}, {off[2]}, false, "removed"},
        {"same row in both lists (inactive)", {off[3]}, {off[3]}, false, "removed"},
        {"same row in both lists (active)", {on[3]}, {on[3]}, false, "added"},
        {"added: failing id after valid ones", {off[0], off[1], off[2], on[4], off[3]}, {}, false, "added"},
        {"added: out-of-range id after valid ones", {off[0], off[1], off[2], N + 1000, off[3]}, {}, true, "added"},
        {"added: duplicate at the end of a long list", {off[0], off[1], off[2], off[3], off[4], off[1]}, {on[0]}, false, "added"},
        {"removed: failing id after valid ones (added valid)", {off[0], off[1]}, {on[0], on[1], off[5], on[2]}, false, "removed"},
        {"removed: out-of-range id after valid ones", {off[0], off[1]}, {on[0], on[1], on[2], N}, true, "removed"},
        {"removed: duplicate after valid ones", {off[4]}, {on[0], on[1], on[2], on[3], on[1]}, false, "removed"},
    };
    for (const BadCase& bc : cases) {
      g_ctx = std::string("D bad input round ") + std::to_string(round) + ": " + bc.name;
      if (bc.out_of_range)
        EXPECT_THROW_EXACT(std::out_of_range, call(bc.added, bc.removed), what);
      else
        EXPECT_THROW_EXACT(std::invalid_argument, call(bc.added, bc.removed), what);
      CHECK(contains(what, bc.list), "message '" << what << "' does not name the list '" << bc.list << "'");
      expect_unchanged(snap, c);
    }
    g_ctx = "D bad input: negative counts / null pointers";
    {
      const V a = {off[0]};
      EXPECT_THROW_EXACT(std::invalid_argument, c.update_from_indices(a.data(), -1, nullptr, 0), what);
      expect_unchanged(snap, c);
      EXPECT_THROW_EXACT(std::invalid_argument, c.update_from_indices(nullptr, 0, a.data(), -3), what);
      expect_unchanged(snap, c);
      EXPECT_THROW_EXACT(std::invalid_argument, c.update_from_indices(nullptr, 2, nullptr, 0), what);
      expect_unchanged(snap, c);
      EXPECT_THROW_EXACT(std::invalid_argument, c.update_from_indices(a.data(), 1, nullptr, 1), what);
      expect_unchanged(snap, c);
    }
    // The "seen" scratch must be clean: the very ids that were seen before each throw are valid now.
    g_ctx = "D bad input: valid update after the throws (seen scratch cleaned)";
    hz.valid({}, {});  // null-free noop through the index path
    c.update_from_indices(nullptr, 0, nullptr, 0);
    CHECK(c.last_update_stats().path == pr::UpdatePath::kNoop, "empty lists are not a noop");
    hz.valid({off[0], off[1], off[2], off[3], off[4]}, {on[0], on[1], on[2], on[3]});
    // ... and the reverse direction with the same ids (now active / inactive respectively).
    hz.valid({on[1], on[3]}, {off[1], off[4]});
  }

  // Exhaustively: a failing id at every position of a list of valid ids, then the same list
  // without the failing id must be accepted.
  for (int pos = 0; pos < 8; ++pos) {
    g_ctx = "D bad input: failing id at position " + std::to_string(pos);
    V off = inactive(), on = active();
    off.resize(7);
    on.resize(7);
    const Snapshot snap = snapshot(c);
    V bad_added = off;
    bad_added.insert(bad_added.begin() + pos, on[6]);  // already active
    EXPECT_THROW_EXACT(std::invalid_argument, call(bad_added, {}), what);
    CHECK(contains(what, "added[" + std::to_string(pos) + "]"), "message '" << what << "' does not give the position");
    expect_unchanged(snap, c);
    V bad_removed = on;
    bad_removed.insert(bad_removed.begin() + pos, off[0]);  // not active
    EXPECT_THROW_EXACT(std::invalid_argument, call(off, bad_removed), what);
    expect_unchanged(snap, c);
    V dup_removed = on;
    dup_removed.insert(dup_removed.begin() + pos, on[static_cast<std::size_t>(pos % 7)]);
    EXPECT_THROW_EXACT(std::invalid_argument, call(off, dup_removed), what);
    expect_unchanged(snap, c);
    hz.valid(off, on);
  }
}

// =============================================================================================
// E. Invalid settings / shapes / constructor arguments, environment
// =============================================================================================
void section_settings_shape_env() {
  ++g_num_sequences;
  Rng rng(99);
  pr::Shape shape;
  shape.rows = 70;
  shape.gate_cols = 2;
  shape.up_cols = 3;
  shape.hidden = 4;
  shape.elem_size = 2;
  Problem P = make_problem(rng, shape, random_bits(rng, 70, 0.3));
  pr::Settings good;
  good.grain = 5;
  good.par_threshold = 2;
  good.hybrid_tau_frac = 0.75;
  Harness hz(std::move(P), good);
  std::string what;

  g_ctx = "E invalid Settings via set_settings";
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  struct SetCase { std::int64_t grain, par; double tau; const char* field; };
  const SetCase bad_settings[] = {
      {0, 0, 0.5, "grain"},   {-3, 0, 0.5, "grain"},         {1, -1, 0.5, "par_threshold"},
      {1, 0, nan, "hybrid_tau_frac"}, {1, 0, -1.0, "hybrid_tau_frac"}, {1, 0, inf, "hybrid_tau_frac"},
      {1, 0, -inf, "hybrid_tau_frac"},
  };
  for (const SetCase& sc : bad_settings) {
    const Snapshot snap = snapshot(hz.cache);
    pr::Settings s;
    s.grain = sc.grain;
    s.par_threshold = sc.par;
    s.hybrid_tau_frac = sc.tau;
    EXPECT_THROW_EXACT(std::invalid_argument, hz.cache.set_settings(s), what);
    CHECK(contains(what, sc.field), "message '" << what << "' does not name " << sc.field);
    expect_unchanged(snap, hz.cache);
  }
  {
    pr::Settings s;
    s.grain = 1;
    s.par_threshold = 0;
    s.hybrid_tau_frac = 0.0;  // boundary values are valid
    hz.cache.set_settings(s);
    CHECK(hz.cache.settings().grain == 1 && hz.cache.settings().par_threshold == 0 &&
              hz.cache.settings().hybrid_tau_frac == 0.0,
          "valid set_settings did not take");
    hz.tau = 0.0;
    hz.valid({rows_where(hz.M.mask, false)[0]}, {});
    CHECK(hz.cache.last_update_stats().path == pr::UpdatePath::kRebuild, "tau 0 must rebuild");
  }

  g_ctx = "E invalid Shape / arguments in the constructor";
  {
    std::vector<std::uint64_t> dummy(64, 0);  // enough bytes for every small valid case below
    std::vector<std::uint8_t> mask(64, 1);
    const auto make = [&](const pr::Shape& s, const void* g, const void* u, const void* d,
                          const std::uint8_t* mk, const pr::Settings& st) {
      pr::WeightCache c(s, g, u, d, mk, 1, st);
      (void)c;
    };
    pr::Shape ok;
    ok.rows = 4;
    ok.gate_cols = 1;
    ok.up_cols = 1;
    ok.hidden = 2;
    ok.elem_size = 4;
    const void* D = dummy.data();
    make(ok, D, D, D, mask.data(), pr::Settings{});  // sanity: valid
    struct ShapeCase { const char* name; pr::Shape s; };
    std::vector<ShapeCase> bad_shapes;
    auto add = [&](const char* name, auto mutate) {
      pr::Shape s = ok;
      mutate(s);
      bad_shapes.push_back({name, s});
    };
    add("rows 0", [](pr::Shape& s) { s.rows = 0; });
    add("rows -1", [](pr::Shape& s) { s.rows = -1; });
    add("rows kMaxRows+1", [](pr::Shape& s) { s.rows = pr::kMaxRows + 1; });
    add("up_cols 0", [](pr::Shape& s) { s.up_cols = 0; });
    add("gate_cols -1", [](pr::Shape& s) { s.gate_cols = -1; });
    add("hidden 0", [](pr::Shape& s) { s.hidden = 0; });
    add("elem_size 0", [](pr::Shape& s) { s.elem_size = 0; });
    add("elem_size 3", [](pr::Shape& s) { s.elem_size = 3; });
    add("elem_size 16", [](pr::Shape& s) { s.elem_size = 16; });
    for (const auto& sc : bad_shapes) {
      g_ctx = std::string("E constructor with invalid Shape: ") + sc.name;
      EXPECT_THROW_EXACT(std::invalid_argument, make(sc.s, D, D, D, mask.data(), pr::Settings{}), what);
    }
    g_ctx = "E constructor with null pointers / invalid settings";
    EXPECT_THROW_EXACT(std::invalid_argument, make(ok, nullptr, D, D, mask.data(), pr::Settings{}), what);
    EXPECT_THROW_EXACT(std::invalid_argument, make(ok, D, nullptr, D, mask.data(), pr::Settings{}), what);
    EXPECT_THROW_EXACT(std::invalid_argument, make(ok, D, D, nullptr, mask.data(), pr::Settings{}), what);
    EXPECT_THROW_EXACT(std::invalid_argument, make(ok, D, D, D, nullptr, pr::Settings{}), what);
    pr::Shape no_gate = ok;
    no_gate.gate_cols = 0;
    make(no_gate, nullptr, D, D, mask.data(), pr::Settings{});  // valid: no gate, null gate
    for (const SetCase& sc : bad_settings) {
      pr::Settings s;
      s.grain = sc.grain;
      s.par_threshold = sc.par;
      s.hybrid_tau_frac = sc.tau;
      EXPECT_THROW_EXACT(std::invalid_argument, make(ok, D, D, D, mask.data(), s), what);
    }
  }

  g_ctx = "E Settings::from_environment";
  {
    const char* names[] = {"WEIGHT_CACHE_GRAIN", "WEIGHT_CACHE_PAR_THRESHOLD", "WEIGHT_CACHE_HYBRID_TAU_FRAC"};
    std::vector<std::pair<bool, std::string>> saved;
    for (const char* n : names) {
      const char* v = std::getenv(n);
      saved.emplace_back(v != nullptr, v ? v : "");
      unsetenv(n);
    }
    {
      const pr::Settings d = pr::Settings::from_environment();
      CHECK(d.grain == pr::kDefaultGrain && d.par_threshold == pr::kDefaultParThreshold &&
                d.hybrid_tau_frac == pr::kDefaultHybridTauFrac,
            "defaults without environment");
    }
    setenv("WEIGHT_CACHE_GRAIN", "7", 1);
    setenv("WEIGHT_CACHE_PAR_THRESHOLD", "0", 1);
    setenv("WEIGHT_CACHE_HYBRID_TAU_FRAC", "0.25", 1);
    {
      const pr::Settings e = pr::Settings::from_environment();
      CHECK(e.grain == 7 && e.par_threshold == 0 && e.hybrid_tau_frac == 0.25, "values from environment");
    }
    for (const char* n : names) unsetenv(n);

    struct EnvCase { const char* var; const char* value; const char* field; };
    // `field` is the Settings field; the message must name the variable (see the note below).
    const EnvCase env_cases[] = {
        {"WEIGHT_CACHE_GRAIN", "abc", "grain"},
        {"WEIGHT_CACHE_GRAIN", "0", "grain"},
        {"WEIGHT_CACHE_GRAIN", "-4", "grain"},
        {"WEIGHT_CACHE_GRAIN", "", "grain"},
        {"WEIGHT_CACHE_GRAIN", "12abc", "grain"},
        {"WEIGHT_CACHE_GRAIN", "1.5", "grain"},
        {"WEIGHT_CACHE_GRAIN", "99999999999999999999999", "grain"},
        {"WEIGHT_CACHE_PAR_THRESHOLD", "x", "par_threshold"},
        {"WEIGHT_CACHE_PAR_THRESHOLD", "-1", "par_threshold"},
        {"WEIGHT_CACHE_HYBRID_TAU_FRAC", "nan", "hybrid_tau_frac"},
        {"WEIGHT_CACHE_HYBRID_TAU_FRAC", "abc", "hybrid_tau_frac"},
        {"WEIGHT_CACHE_HYBRID_TAU_FRAC", "inf", "hybrid_tau_frac"},
        {"WEIGHT_CACHE_HYBRID_TAU_FRAC", "-1", "hybrid_tau_frac"},
        {"WEIGHT_CACHE_HYBRID_TAU_FRAC", "0.5x", "hybrid_tau_frac"},
    };
    for (const EnvCase& ec : env_cases) {
      g_ctx = std::string("E from_environment with ") + ec.var + "='" + ec.value + "'";
      setenv(ec.var, ec.value, 1);
      EXPECT_THROW_EXACT(std::invalid_argument, pr::Settings::from_environment(), what);
      // Malformed and out-of-range values alike name the variable itself.
      CHECK(contains(what, ec.var), "message '" << what << "' does not name " << ec.var);
      unsetenv(ec.var);
    }

    g_ctx = "E from_environment: white space around a value is ignored, on either side";
    const std::pair<const char*, std::int64_t> grains[] = {{" 7", 7}, {"7 ", 7}, {"\t7\n", 7}, {"+7", 7}};
    for (const auto& [text, value] : grains) {
      setenv("WEIGHT_CACHE_GRAIN", text, 1);
      CHECK(pr::Settings::from_environment().grain == value, "WEIGHT_CACHE_GRAIN='" << text << "'");
    }
    unsetenv("WEIGHT_CACHE_GRAIN");
    const std::pair<const char*, double> taus[] = {{" 0.25 ", 0.25}, {"1e-1", 0.1}, {".5", 0.5}, {"2.", 2.0}};
    for (const auto& [text, value] : taus) {
      setenv("WEIGHT_CACHE_HYBRID_TAU_FRAC", text, 1);
      CHECK(pr::Settings::from_environment().hybrid_tau_frac == value,
            "WEIGHT_CACHE_HYBRID_TAU_FRAC='" << text << "'");
    }
    unsetenv("WEIGHT_CACHE_HYBRID_TAU_FRAC");
    g_ctx = "E from_environment: only plain decimal numbers";
    const EnvCase strict_cases[] = {
        {"WEIGHT_CACHE_GRAIN", "0x10", "grain"},          {"WEIGHT_CACHE_GRAIN", "7 7", "grain"},
        {"WEIGHT_CACHE_GRAIN", "- 7", "grain"},           {"WEIGHT_CACHE_GRAIN", "  ", "grain"},
        {"WEIGHT_CACHE_HYBRID_TAU_FRAC", "0x1p-2", "tau"}, {"WEIGHT_CACHE_HYBRID_TAU_FRAC", "1e400", "tau"},
        {"WEIGHT_CACHE_HYBRID_TAU_FRAC", "1e", "tau"},     {"WEIGHT_CACHE_HYBRID_TAU_FRAC", ".", "tau"},
        {"WEIGHT_CACHE_HYBRID_TAU_FRAC", "infinity", "tau"}, {"WEIGHT_CACHE_HYBRID_TAU_FRAC", "0.5 0.5", "tau"},
    };
    for (const EnvCase& ec : strict_cases) {
      g_ctx = std::string("E from_environment with ") + ec.var + "='" + ec.value + "'";
      setenv(ec.var, ec.value, 1);
      EXPECT_THROW_EXACT(std::invalid_argument, pr::Settings::from_environment(), what);
      CHECK(contains(what, ec.var), "message '" << what << "' does not name " << ec.var);
      unsetenv(ec.var);
    }

    g_ctx = "E from_environment: an explicit value wins and its variable is not read";
    setenv("WEIGHT_CACHE_GRAIN", "not a number", 1);
    setenv("WEIGHT_CACHE_PAR_THRESHOLD", "-5", 1);
    setenv("WEIGHT_CACHE_HYBRID_TAU_FRAC", "nan", 1);
    {
      pr::SettingOverrides o;
      o.grain = 5;
      o.par_threshold = 9;
      o.hybrid_tau_frac = 0.125;
      const pr::Settings e = pr::Settings::from_environment(o);
      CHECK(e.grain == 5 && e.par_threshold == 9 && e.hybrid_tau_frac == 0.125, "overrides not taken");
      o.par_threshold.reset();  // this one is read again, and is malformed
      EXPECT_THROW_EXACT(std::invalid_argument, pr::Settings::from_environment(o), what);
      CHECK(contains(what, "WEIGHT_CACHE_PAR_THRESHOLD") && !contains(what, "GRAIN"), "message '" << what << "'");
    }
    for (const char* n : names) unsetenv(n);
    for (std::size_t i = 0; i < 3; ++i)
      if (saved[i].first) setenv(names[i], saved[i].second.c_str(), 1);
  }

  g_ctx = "E Shape::validate: buffer sizes that overflow 64 bits, or exceed ptrdiff_t";
  {
    pr::Shape huge;
    huge.rows = pr::kMaxRows;
    huge.gate_cols = 0;
    huge.up_cols = 1;
    huge.hidden = pr::kMaxRows;  // (2^31 - 1)^2 * 8 bytes: wraps size_t
    huge.elem_size = 8;
    EXPECT_THROW_EXACT(std::invalid_argument, huge.validate(), what);
    CHECK(contains(what, "2^63"), "message '" << what << "'");
    huge.hidden = 1;
    huge.up_cols = std::int64_t{1} << 28;  // 2^31 rows of 2^31 bytes: fits size_t, not the limit
    EXPECT_THROW_EXACT(std::invalid_argument, huge.validate(), what);
    huge.up_cols = 1;
    huge.validate();  // 2^31 rows of 8 bytes (four 16 GiB buffers) is a valid shape
  }
}

// =============================================================================================
// F. Move semantics, views outliving the cache
// =============================================================================================
void section_move() {
  ++g_num_sequences;
  Rng rng(31337);
  pr::Shape shape;
  shape.rows = 200;
  shape.gate_cols = 0;
  shape.up_cols = 4;
  shape.hidden = 3;
  shape.elem_size = 4;
  Problem P = make_problem(rng, shape, random_bits(rng, 200, 0.3));
  pr::Settings s;
  s.hybrid_tau_frac = 0.5;
  s.par_threshold = 0;
  s.grain = 7;
  const auto ops = make_ops(rng, P.init_bits, 30, false);

  g_ctx = "F move construction";
  auto a = std::make_unique<pr::WeightCache>(P.shape, P.gate, P.up, P.down, P.init_mask.data(),
                                             P.init_stride, s);
  Model M(P.init_bits);
  const auto step = [&](pr::WeightCache& c, const Op& op) {
    ++g_num_updates;
    const pr::UpdateStats expect = M.apply(op.added, op.removed, s.hybrid_tau_frac);
    CallLog log;
    if (op.kind == Op::kMask)
      c.update_from_mask(op.mask_buf.data(), op.stride, ReverseChunks{&log});
    else
      c.update_from_indices(op.added.data(), static_cast<std::int64_t>(op.added.size()),
                            op.removed.data(), static_cast<std::int64_t>(op.removed.size()),
                            ReverseChunks{&log});
    CHECK(stats_equal(c.last_update_stats(), expect), "stats after move " << stats_str(c.last_update_stats()));
    verify(c, M, P);
  };
  for (int i = 0; i < 10; ++i) step(*a, ops[static_cast<std::size_t>(i)]);
  const std::byte* packed_before = a->packed_concat().get();
  std::shared_ptr<std::byte> view = a->packed_down();  // a view held by a "tensor"
  pr::WeightCache b(std::move(*a));
  a.reset();  // destroy the moved-from cache
  CHECK(b.packed_concat().get() == packed_before, "move construction copied the buffers");
  verify(b, M, P);
  for (int i = 10; i < 20; ++i) step(b, ops[static_cast<std::size_t>(i)]);
  CHECK(view.get() == b.packed_down().get(), "view no longer aliases the packed buffer");

  g_ctx = "F move assignment";
  Problem P2 = make_problem(rng, [] {
    pr::Shape t;
    t.rows = 5;
    t.gate_cols = 1;
    t.up_cols = 1;
    t.hidden = 1;
    t.elem_size = 2;
    return t;
  }(), random_bits(rng, 5, 0.5));
  pr::WeightCache c(P2.shape, P2.gate, P2.up, P2.down, P2.init_mask.data(), P2.init_stride, s);
  c = std::move(b);
  verify(c, M, P);
  for (int i = 20; i < 30; ++i) step(c, ops[static_cast<std::size_t>(i)]);

  g_ctx = "F views outlive the cache";
  {
    std::shared_ptr<std::byte> keep;
    std::vector<std::byte> expect;
    {
      pr::WeightCache d(P.shape, P.gate, P.up, P.down, P.init_mask.data(), P.init_stride, s);
      keep = d.packed_concat();
      expect.assign(keep.get(), keep.get() + static_cast<std::size_t>(d.num_active()) * d.concat_ld_bytes());
    }
    CHECK(std::memcmp(keep.get(), expect.data(), expect.size()) == 0, "view contents changed after destruction");
  }
}

// =============================================================================================
// G. Work counters at large N, and an executor that fails
// =============================================================================================

// Runs the first chunk, then throws, as an executor that cannot start its threads might.
struct ThrowingFor {
  template <class Body>
  void operator()(std::int64_t begin, std::int64_t end, std::int64_t grain, const Body& body) const {
    if (begin < end) body(begin, std::min(end, begin + grain));
    throw std::runtime_error("executor failure (injected)");
  }
};

std::int64_t random_row_where(Rng& rng, const std::vector<bool>& mask, bool val) {
  for (;;) {
    const std::int64_t r = rand_int(rng, 0, static_cast<std::int64_t>(mask.size()) - 1);
    if (mask[static_cast<std::size_t>(r)] == val) return r;
  }
}

void section_work_and_executor_failure() {
  Rng rng(0xC0FFEE);
  g_ctx = "G index-path rebuilds at N = 2^20 and m' <= 4 read no mask word";
  {
    ++g_num_sequences;
    pr::Shape shape;
    shape.rows = std::int64_t{1} << 20;
    shape.gate_cols = 0;
    shape.up_cols = 1;
    shape.hidden = 1;
    shape.elem_size = 1;
    std::vector<bool> bits(static_cast<std::size_t>(shape.rows), false);
    for (int i = 0; i < 2; ++i) bits[static_cast<std::size_t>(random_row_where(rng, bits, false))] = true;
    Problem P = make_problem(rng, shape, bits);
    pr::Settings s;
    s.hybrid_tau_frac = 0.0;  // every change rebuilds
    pr::WeightCache cache(shape, P.gate, P.up, P.down, P.init_mask.data(), P.init_stride, s);
    Model M(P.init_bits);
    for (int step = 0; step < 300; ++step) {
      ++g_num_updates;
      std::vector<std::int64_t> added, removed;
      std::vector<bool> after = M.mask;
      const std::int64_t num_added = rand_int(rng, 0, M.m() >= 4 ? 0 : 2);
      for (std::int64_t i = 0; i < num_added; ++i) {
        added.push_back(random_row_where(rng, after, false));
        after[static_cast<std::size_t>(added.back())] = true;
      }
      if (M.m() > 0 && coin(rng, 0.7)) removed.push_back(M.row_at[static_cast<std::size_t>(rand_int(rng, 0, M.m() - 1))]);
      const pr::UpdateStats expect = M.apply(added, removed, s.hybrid_tau_frac);
      cache.update_from_indices(added.data(), static_cast<std::int64_t>(added.size()), removed.data(),
                                static_cast<std::int64_t>(removed.size()));
      CHECK(stats_equal(cache.last_update_stats(), expect), "stats " << stats_str(cache.last_update_stats()));
      CHECK(cache.last_update_work().mask_words_scanned == 0,
            "an index update read " << cache.last_update_work().mask_words_scanned << " mask words");
      CHECK(std::equal(M.row_at.begin(), M.row_at.end(), cache.active_rows()), "row order differs from the model");
      if (step % 100 == 99) verify(cache, M, P);  // O(N): only now and then
    }
    // A mask update reads every word once (its diff) and, ordering its rebuild by sorting, no more.
    std::vector<bool> next = M.mask;
    next[static_cast<std::size_t>(random_row_where(rng, next, false))] = true;
    std::vector<std::uint8_t> buf(next.begin(), next.end());
    std::vector<std::int64_t> added = {}, removed = {};
    for (std::size_t r = 0; r < next.size(); ++r)
      if (next[r] != M.mask[r]) (next[r] ? added : removed).push_back(static_cast<std::int64_t>(r));
    const pr::UpdateStats expect = M.apply(added, removed, s.hybrid_tau_frac);
    cache.update_from_mask(buf.data(), 1);
    CHECK(stats_equal(cache.last_update_stats(), expect), "stats " << stats_str(cache.last_update_stats()));
    CHECK(cache.last_update_work().mask_words_scanned == shape.rows / 64,
          "a mask update read " << cache.last_update_work().mask_words_scanned << " words");
    verify(cache, M, P);
  }

  g_ctx = "G an executor that throws after one chunk: the update completes serially";
  for (int seed = 0; seed < 20; ++seed) {
    ++g_num_sequences;
    const pr::Shape shape = random_shape(rng, seed % 4 == 0);
    Problem P = make_problem(rng, shape, random_bits(rng, shape.rows, rand_real(rng, 0.0, 1.0)));
    pr::Settings s;
    s.grain = rand_int(rng, 1, 4);
    s.par_threshold = 0;
    s.hybrid_tau_frac = seed % 3 == 0 ? 0.0 : 1e9;
    pr::WeightCache cache(shape, P.gate, P.up, P.down, P.init_mask.data(), P.init_stride, s);
    Model M(P.init_bits);
    for (const Op& op : make_ops(rng, P.init_bits, 15, false)) {
      ++g_num_updates;
      const pr::UpdateStats expect = M.apply(op.added, op.removed, s.hybrid_tau_frac);
      if (op.kind == Op::kMask)
        cache.update_from_mask(op.mask_buf.data(), op.stride, ThrowingFor{});
      else
        cache.update_from_indices(op.added.data(), static_cast<std::int64_t>(op.added.size()),
                                  op.removed.data(), static_cast<std::int64_t>(op.removed.size()),
                                  ThrowingFor{});
      CHECK(stats_equal(cache.last_update_stats(), expect), "stats " << stats_str(cache.last_update_stats()));
      const std::int64_t n = expect.rows_written;
      CHECK(cache.last_update_work().copy_tasks == (n > 0 ? 1 : 0),
            "copy_tasks " << cache.last_update_work().copy_tasks << " after the serial redo of " << n << " rows");
      verify(cache, M, P);
    }
  }
}

// =============================================================================================
// H. A RowSource (the seam of the slower tiers): same bookkeeping, rows through the source
// =============================================================================================
// The rows of a Problem served through the RowSource interface, counting the bytes it "reads"
// (one record = the row's gate|up data plus its down data) and failing on request.
struct VectorSource final : pr::RowSource {
  pr::Shape shape_;
  const Problem* problem = nullptr;
  std::int64_t fail_after = -1;  // rows left to serve before a read fails (-1: never fails)
  std::uint64_t bytes = 0;

  const pr::Shape& shape() const noexcept override { return shape_; }
  std::uint64_t bytes_read() const noexcept override { return bytes; }
  void fetch(std::int64_t n, const std::int32_t* slots, const std::int32_t* rows, std::byte* pc,
             std::size_t lc, std::byte* pd, std::size_t ld) override {
    for (std::int64_t i = 0; i < n; ++i) {
      if (fail_after == 0) throw std::runtime_error("injected read failure at row " + std::to_string(rows[i]));
      if (fail_after > 0) --fail_after;
      const auto& ec = problem->exp_concat[static_cast<std::size_t>(rows[i])];
      const auto& ed = problem->exp_down[static_cast<std::size_t>(rows[i])];
      std::memcpy(pc + static_cast<std::size_t>(slots[i]) * lc, ec.data(), ec.size());
      std::memcpy(pd + static_cast<std::size_t>(slots[i]) * ld, ed.data(), ed.size());
      bytes += ec.size() + ed.size();
    }
  }
};

void section_row_source() {
  Rng rng(0xF11E);
  g_ctx = "H a cache on a RowSource equals the in-memory cache slot for slot, and counts its reads";
  for (int seed = 0; seed < 40; ++seed) {
    ++g_num_sequences;
    const pr::Shape shape = random_shape(rng, seed % 4 == 0);
    Problem P = make_problem(rng, shape, random_bits(rng, shape.rows, rand_real(rng, 0.0, 1.0)));
    auto source = std::make_shared<VectorSource>();
    source->shape_ = shape;
    source->problem = &P;
    pr::Settings s;
    s.hybrid_tau_frac = seed % 3 == 0 ? 0.0 : (seed % 3 == 1 ? 0.5 : 1e9);
    pr::WeightCache memory(shape, P.gate, P.up, P.down, P.init_mask.data(), P.init_stride, s);
    pr::WeightCache tiered(source, P.init_mask.data(), P.init_stride, s);
    const std::uint64_t record = P.exp_concat[0].size() + P.exp_down[0].size();
    // (the work counter, not source->bytes: debug builds read every row again to check I4)
    CHECK(tiered.last_update_work().slow_bytes_read == tiered.num_active() * static_cast<std::int64_t>(record),
          "initial load read " << tiered.last_update_work().slow_bytes_read << " bytes for "
                               << tiered.num_active() << " rows");
    Model M(P.init_bits);
    verify(tiered, M, P);
    for (const Op& op : make_ops(rng, P.init_bits, 20, false)) {
      ++g_num_updates;
      const pr::UpdateStats expect = M.apply(op.added, op.removed, s.hybrid_tau_frac);
      for (pr::WeightCache* c : {&memory, &tiered}) {
        if (op.kind == Op::kMask)
          c->update_from_mask(op.mask_buf.data(), op.stride);
        else
          c->update_from_indices(op.added.data(), static_cast<std::int64_t>(op.added.size()),
                                 op.removed.data(), static_cast<std::int64_t>(op.removed.size()));
        CHECK(stats_equal(c->last_update_stats(), expect), "stats " << stats_str(c->last_update_stats()));
      }
      CHECK(std::equal(memory.active_rows(), memory.active_rows() + memory.num_active(), tiered.active_rows()),
            "slot order differs between the in-memory and the RowSource cache");
      CHECK(tiered.last_update_work().slow_bytes_read == expect.rows_written * static_cast<std::int64_t>(record),
            "slow_bytes_read " << tiered.last_update_work().slow_bytes_read << " for " << expect.rows_written << " rows");
      CHECK(memory.last_update_work().slow_bytes_read == 0, "an in-memory cache read from a slow tier");
      verify(tiered, M, P);
    }
  }

  g_ctx = "H a RowSource that fails mid-update: the error goes on, the cache is empty and valid";
  for (int seed = 0; seed < 30; ++seed) {
    ++g_num_sequences;
    const pr::Shape shape = random_shape(rng, false);
    Problem P = make_problem(rng, shape, random_bits(rng, shape.rows, 0.5));
    auto source = std::make_shared<VectorSource>();
    source->shape_ = shape;
    source->problem = &P;
    pr::Settings s;
    s.hybrid_tau_frac = seed % 2 == 0 ? 0.0 : 1e9;
    pr::WeightCache tiered(source, P.init_mask.data(), P.init_stride, s);
    Model M(P.init_bits);
    for (const Op& op : make_ops(rng, P.init_bits, 6, false)) {
      ++g_num_updates;
      Model next = M;
      const pr::UpdateStats expect = next.apply(op.added, op.removed, s.hybrid_tau_frac);
      const auto run = [&] {
        if (op.kind == Op::kMask)
          tiered.update_from_mask(op.mask_buf.data(), op.stride);
        else
          tiered.update_from_indices(op.added.data(), static_cast<std::int64_t>(op.added.size()),
                                     op.removed.data(), static_cast<std::int64_t>(op.removed.size()));
      };
      if (expect.rows_written == 0) {  // nothing to read: nothing can fail
        run();
        M = next;
        continue;
      }
      source->fail_after = rand_int(rng, 0, expect.rows_written - 1);
      bool threw = false;
      try {
        run();
      } catch (const std::runtime_error& e) {
        threw = std::string(e.what()).find("injected read failure") != std::string::npos;
      }
      source->fail_after = -1;
      CHECK(threw, "the source's error did not reach the caller");
      M = Model(std::vector<bool>(static_cast<std::size_t>(shape.rows), false));
      verify(tiered, M, P);  // empty, every invariant holds
      // and it recovers: loading the mask the failed update wanted reads every row again
      std::vector<std::uint8_t> want(next.mask.begin(), next.mask.end());
      tiered.update_from_mask(want.data(), 1);
      M.apply(rows_where(next.mask, true), {}, s.hybrid_tau_frac);
      verify(tiered, M, P);
      break;
    }
  }

  g_ctx = "H a null RowSource is refused";
  {
    std::uint8_t none = 0;
    bool threw = false;
    try {
      pr::WeightCache bad(std::shared_ptr<pr::RowSource>{}, &none, 1, pr::Settings{});
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    CHECK(threw, "a null source was accepted");
  }
}

}  // namespace

int main() {
  const auto t0 = std::chrono::steady_clock::now();
  try {
    section_random(700);
    section_executors(16);
    section_padding_and_streaming();
    section_bad_input();
    section_settings_shape_env();
    section_move();
    section_work_and_executor_failure();
    section_row_source();
    g_ctx = "coverage of the randomized sections";
    const Coverage& c = g_cov;
    CHECK(c.noop > 0 && c.paired > 0 && c.rebuild > 0, "every update path must be reached");
    CHECK(c.paired_zero_writes > 0 && c.paired_shrink_with_tail > 0, "paired corner cases not reached");
    CHECK(c.mask_updates[1] > 0 && c.mask_updates[2] > 0 && c.mask_updates[3] > 0, "mask strides");
    CHECK(c.index_updates > 0 && c.executor_calls > 0, "index updates / executor calls");
    CHECK(c.padded_row_updates > 0 && c.streaming_updates > 0 && c.crossed_word_boundary > 0,
          "padded rows / streaming copies / N > 128");
    CHECK(c.rebuild_by_sort > 0 && c.rebuild_by_scan > 0, "rebuild orderings (sort / scan)");
    std::printf("core_selftest: coverage: noop %ld, paired %ld (W=0 with removals %ld, shrink with tail "
                "moves %ld), rebuild %ld; mask updates stride1/2/3 %ld/%ld/%ld, index updates %ld; "
                "executor calls %ld; padded-row updates %ld; streaming updates %ld; rebuilds ordered by "
                "sort/scan %ld/%ld\n",
                c.noop, c.paired, c.paired_zero_writes, c.paired_shrink_with_tail, c.rebuild,
                c.mask_updates[1], c.mask_updates[2], c.mask_updates[3], c.index_updates,
                c.executor_calls, c.padded_row_updates, c.streaming_updates, c.rebuild_by_sort,
                c.rebuild_by_scan);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "core_selftest: FAILED: unexpected exception: %s\n  while: %s\n", e.what(),
                 g_ctx.c_str());
    return 2;
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("core_selftest: finished in %.1f s\n", secs);
  std::printf("core_selftest: %ld sequences, %ld updates, all checks passed\n", g_num_sequences,
              g_num_updates);
  return 0;
}

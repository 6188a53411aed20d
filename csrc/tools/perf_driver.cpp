// perf_driver — the counted workload of `python -m paired_replacement.bench perf`.
//
// A standalone C++17 program (standard library + POSIX + the header-only core; no torch). It
//   1. builds random fp32 weights (gate [N, H] unless --gate 0, up [N, H], down [H, N]) and a
//      WeightCache over an initial mask of m random active rows (single-threaded: SerialFor);
//   2. pre-generates a chain of masks, each swapping k active rows for k inactive ones (seeded:
//      the same chain for both methods);
//   3. runs the first U of them through update_from_mask — the ONLY part meant to be counted —
//      with hybrid_tau_frac = 1e9 (method paired: every update is a paired update) or 0 (method
//      rebuild: every update re-gathers all m rows);
//   4. prints one JSON line: updates, rows_written (summed UpdateStats::rows_written), an
//      order-independent checksum of the packed block (sum of per-row hashes over slots [0, m):
//      equal for both methods when they hold the same rows, and it keeps the copies observable).
//
// Counted region: with --ctl-fd C --ack-fd A (perf stat --control fd:CTL,ACK with --delay=-1,
// counters start disabled) the driver writes "enable\n" to C and waits for "ack" on A right before
// the first update, then "disable\n" and waits for "ack" right after the last one.
//
// Setup-only runs: --updates 0 --gen-updates U builds exactly what a --updates U run builds
// (same weights, same mask chain) and skips the updates, so counts of the U updates are the
// difference of the two runs (the cachegrind method: valgrind 3.19 cannot start counting late).
// Numbers may carry leading zeros ("--updates 00"), so both runs can have argv of equal length.
//
// Exit status 0 on success, 2 on bad arguments, 1 on any other failure (message on stderr).

#include "paired_replacement/weight_cache.hpp"

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace pr = paired_replacement;

struct Args {
  std::int64_t rows = 2048;
  std::int64_t active = 512;
  std::int64_t k = 64;
  std::int64_t hidden = 256;
  bool gate = true;
  std::int64_t updates = 20;
  std::int64_t gen_updates = -1;  // -1: same as updates
  std::string method = "paired";
  std::uint64_t seed = 0;
  int ctl_fd = -1;
  int ack_fd = -1;
  bool check = false;
};

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char kUsage[] =
    "usage: perf_driver [--rows N] [--active m] [--k k] [--hidden H] [--gate 0|1]\n"
    "                   [--updates U] [--gen-updates G] [--method paired|rebuild] [--seed S]\n"
    "                   [--ctl-fd FD --ack-fd FD] [--check]\n"
    "Single-threaded. Prints one JSON line. G (default U) masks are generated before counting;\n"
    "the first U are applied inside the counted region (G >= U).\n";

std::int64_t parse_int(const char* name, const char* s) {
  std::int64_t v = 0;
  if (!pr::detail::parse_int64(s, v))
    throw UsageError(std::string(name) + ": not an integer: '" + s + "'");
  return v;
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string opt = argv[i];
    if (opt == "--help" || opt == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (opt == "--check") {
      a.check = true;
      continue;
    }
    if (i + 1 >= argc) throw UsageError(opt + " needs a value (or is unknown)");
    const char* v = argv[++i];
    if (opt == "--rows") a.rows = parse_int("--rows", v);
    else if (opt == "--active") a.active = parse_int("--active", v);
    else if (opt == "--k") a.k = parse_int("--k", v);
    else if (opt == "--hidden") a.hidden = parse_int("--hidden", v);
    else if (opt == "--gate") {
      const std::int64_t g = parse_int("--gate", v);
      if (g != 0 && g != 1) throw UsageError("--gate must be 0 or 1");
      a.gate = g == 1;
    } else if (opt == "--updates") a.updates = parse_int("--updates", v);
    else if (opt == "--gen-updates") a.gen_updates = parse_int("--gen-updates", v);
    else if (opt == "--method") a.method = v;
    else if (opt == "--seed") a.seed = static_cast<std::uint64_t>(parse_int("--seed", v));
    else if (opt == "--ctl-fd") a.ctl_fd = static_cast<int>(parse_int("--ctl-fd", v));
    else if (opt == "--ack-fd") a.ack_fd = static_cast<int>(parse_int("--ack-fd", v));
    else throw UsageError("unknown option " + opt);
  }
  if (a.gen_updates < 0) a.gen_updates = a.updates;
  if (a.rows < 1 || a.rows > pr::kMaxRows) throw UsageError("--rows must be in [1, 2^31)");
  if (a.active < 0 || a.active > a.rows) throw UsageError("--active must be in [0, rows]");
  if (a.k < 0 || a.k > a.active || a.k > a.rows - a.active)
    throw UsageError("--k must be in [0, min(active, rows - active)]");
  if (a.hidden < 1) throw UsageError("--hidden must be >= 1");
  if (a.updates < 0) throw UsageError("--updates must be >= 0");
  if (a.gen_updates < a.updates) throw UsageError("--gen-updates must be >= --updates");
  if (a.method != "paired" && a.method != "rebuild")
    throw UsageError("--method must be paired or rebuild");
  if ((a.ctl_fd < 0) != (a.ack_fd < 0)) throw UsageError("--ctl-fd and --ack-fd go together");
  return a;
}

// splitmix64: small, seedable, identical everywhere.
struct Rng {
  std::uint64_t state;
  explicit Rng(std::uint64_t seed) : state(seed * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL) {}
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n), n >= 1 (the tiny modulo bias is irrelevant here).
  std::int64_t below(std::int64_t n) {
    return static_cast<std::int64_t>(next() % static_cast<std::uint64_t>(n));
  }
  // Uniform float in [-1, 1).
  float unit() { return static_cast<float>(static_cast<double>(next() >> 40) / 8388608.0 - 1.0); }
};

// Masks [0, G]: mask 0 has m random active rows; mask t+1 = mask t with k random active rows
// switched off and k random inactive rows switched on.
std::vector<std::uint8_t> make_mask_chain(std::int64_t n, std::int64_t m, std::int64_t k,
                                          std::int64_t steps, Rng& rng) {
  using sz = std::size_t;
  std::vector<std::int32_t> perm(static_cast<sz>(n));
  for (std::int64_t i = 0; i < n; ++i) perm[static_cast<sz>(i)] = static_cast<std::int32_t>(i);
  for (std::int64_t i = n - 1; i > 0; --i)
    std::swap(perm[static_cast<sz>(i)], perm[static_cast<sz>(rng.below(i + 1))]);
  // perm[0, m) active, perm[m, n) inactive.
  std::vector<std::uint8_t> chain(static_cast<sz>((steps + 1) * n), 0);
  for (std::int64_t i = 0; i < m; ++i) chain[static_cast<sz>(perm[static_cast<sz>(i)])] = 1;
  const std::int64_t inactive = n - m;
  for (std::int64_t t = 0; t < steps; ++t) {
    std::uint8_t* next = chain.data() + (t + 1) * n;
    std::memcpy(next, chain.data() + t * n, static_cast<sz>(n));
    // Partial Fisher-Yates: the first k of each side are the chosen ones, then they trade sides.
    for (std::int64_t j = 0; j < k; ++j) {
      std::swap(perm[static_cast<sz>(j)], perm[static_cast<sz>(j + rng.below(m - j))]);
      std::swap(perm[static_cast<sz>(m + j)],
                perm[static_cast<sz>(m + j + rng.below(inactive - j))]);
    }
    for (std::int64_t j = 0; j < k; ++j) {
      next[perm[static_cast<sz>(j)]] = 0;
      next[perm[static_cast<sz>(m + j)]] = 1;
      std::swap(perm[static_cast<sz>(j)], perm[static_cast<sz>(m + j)]);
    }
  }
  return chain;
}

// Order-independent checksum of the live packed rows: sum over slots of a hash of the row bytes.
std::uint64_t packed_checksum(const pr::WeightCache& cache) {
  const auto row_hash = [](const std::byte* p, std::size_t bytes) {
    std::uint64_t h = 0xCBF29CE484222325ULL;
    std::size_t i = 0;
    for (; i + 8 <= bytes; i += 8) {
      std::uint64_t w;
      std::memcpy(&w, p + i, 8);
      h = (h ^ w) * 0x100000001B3ULL;
      h ^= h >> 29;
    }
    for (; i < bytes; ++i) h = (h ^ static_cast<std::uint64_t>(p[i])) * 0x100000001B3ULL;
    return h;
  };
  std::uint64_t sum = 0;
  const std::size_t lc = cache.concat_ld_bytes(), ld = cache.down_ld_bytes();
  for (std::int64_t s = 0; s < cache.num_active(); ++s) {
    const auto us = static_cast<std::size_t>(s);
    sum += row_hash(cache.packed_concat().get() + us * lc, lc) * 3 +
           row_hash(cache.packed_down().get() + us * ld, ld);
  }
  return sum;
}

// perf stat control protocol: send a command, wait for "ack\n" (60 s at most).
void control(int ctl_fd, int ack_fd, const char* command) {
  const std::size_t len = std::strlen(command);
  std::size_t done = 0;
  while (done < len) {
    const ssize_t n = ::write(ctl_fd, command + done, len - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      throw std::runtime_error(std::string("write to --ctl-fd failed: ") + std::strerror(errno));
    done += static_cast<std::size_t>(n);
  }
  std::string reply;
  while (reply.find('\n') == std::string::npos) {
    pollfd p{ack_fd, POLLIN, 0};
    const int r = ::poll(&p, 1, 60000);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0)
      throw std::runtime_error(std::string("no ack from perf within 60 s after ") + command);
    if (r < 0)
      throw std::runtime_error(std::string("poll on --ack-fd failed: ") + std::strerror(errno));
    char buf[64];
    const ssize_t n = ::read(ack_fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw std::runtime_error("--ack-fd closed before the ack");
    reply.append(buf, static_cast<std::size_t>(n));
  }
  if (reply.compare(0, 3, "ack") != 0)
    throw std::runtime_error("unexpected reply on --ack-fd: '" + reply + "'");
}

const char* simd_level() {
#if defined(PAIRED_REPLACEMENT_X86) && defined(__AVX512F__)
  return "avx512f";
#elif defined(PAIRED_REPLACEMENT_X86) && defined(__AVX2__)
  return "avx2";
#elif defined(PAIRED_REPLACEMENT_X86) && defined(__AVX__)
  return "avx";
#elif defined(PAIRED_REPLACEMENT_X86)
  return "sse2";
#else
  return "portable";
#endif
}

int run(const Args& a) {
  const std::int64_t n = a.rows, h = a.hidden;
  Rng rng(a.seed);
  // Weights first, then the mask chain: both depend on the seed only (not on the method, not on
  // how many of the masks are applied), so setup-only runs build exactly the same state.
  std::vector<float> gate(a.gate ? static_cast<std::size_t>(n * h) : 0);
  std::vector<float> up(static_cast<std::size_t>(n * h));
  std::vector<float> down(static_cast<std::size_t>(h * n));
  for (auto& x : gate) x = rng.unit();
  for (auto& x : up) x = rng.unit();
  for (auto& x : down) x = rng.unit();
  const std::vector<std::uint8_t> chain = make_mask_chain(n, a.active, a.k, a.gen_updates, rng);

  pr::Shape shape;
  shape.rows = n;
  shape.gate_cols = a.gate ? h : 0;
  shape.up_cols = h;
  shape.hidden = h;
  shape.elem_size = sizeof(float);
  pr::Settings settings;  // grain/par_threshold do not matter: the updates run serially
  settings.hybrid_tau_frac = a.method == "paired" ? 1e9 : 0.0;
  pr::WeightCache cache(shape, a.gate ? gate.data() : nullptr, up.data(), down.data(),
                        chain.data(), 1, settings);

  std::int64_t rows_written = 0, n_paired = 0, n_rebuild = 0, n_noop = 0;
  const bool controlled = a.ctl_fd >= 0;
  // ---- counted region -------------------------------------------------------------------
  if (controlled) control(a.ctl_fd, a.ack_fd, "enable\n");
  for (std::int64_t t = 1; t <= a.updates; ++t) {
    cache.update_from_mask(chain.data() + t * n, 1);
    const pr::UpdateStats& st = cache.last_update_stats();
    rows_written += st.rows_written;
    n_paired += st.path == pr::UpdatePath::kPaired;
    n_rebuild += st.path == pr::UpdatePath::kRebuild;
    n_noop += st.path == pr::UpdatePath::kNoop;
  }
  if (controlled) control(a.ctl_fd, a.ack_fd, "disable\n");
  // ---- end of counted region ------------------------------------------------------------

  if (a.check) {
    cache.check_invariants();
    const std::uint8_t* want = chain.data() + a.updates * n;
    for (std::int64_t r = 0; r < n; ++r)
      if (cache.is_active(r) != (want[r] != 0))
        throw std::logic_error("row " + std::to_string(r) + " has the wrong active state");
  }
  const std::uint64_t checksum = packed_checksum(cache);
  std::printf(
      "{\"method\": \"%s\", \"rows\": %" PRId64 ", \"active\": %" PRId64 ", \"k\": %" PRId64
      ", \"hidden\": %" PRId64 ", \"gate\": %d, \"updates\": %" PRId64 ", \"gen_updates\": %" PRId64
      ", \"seed\": %" PRIu64 ", \"rows_written\": %" PRId64 ", \"paths\": {\"paired\": %" PRId64
      ", \"rebuild\": %" PRId64 ", \"noop\": %" PRId64 "}, \"m_final\": %" PRId64
      ", \"checksum\": \"%016" PRIx64 "\", \"controlled\": %s, \"checked\": %s"
      ", \"simd\": \"%s\", \"dtype\": \"float32\", \"threads\": 1}\n",
      a.method.c_str(), n, a.active, a.k, h, a.gate ? 1 : 0, a.updates, a.gen_updates, a.seed,
      rows_written, n_paired, n_rebuild, n_noop, cache.num_active(), checksum,
      controlled ? "true" : "false", a.check ? "true" : "false", simd_level());
  return std::fflush(stdout) == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const UsageError& e) {
    std::fprintf(stderr, "perf_driver: %s\n%s", e.what(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "perf_driver: error: %s\n", e.what());
    return 1;
  }
}

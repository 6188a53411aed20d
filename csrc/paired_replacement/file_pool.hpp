// Paired Replacement — a pool in a file: the rows of the cache's pool read from disk on demand.
//
// Header-only, C++17, POSIX (pread, O_DIRECT where the file system supports it, std::thread;
// Linux native AIO where the kernel offers it).
// The cache (weight_cache.hpp) takes a RowSource; this file's FileRowSource is the slow tier of
// LLM in a flash (flash -> DRAM): the full weights stay on disk and only the rows an update writes
// are read, straight into their packed slots.
//
// ---------------------------------------------------------------------------------------------
// File format (little-endian; written by paired_replacement.pool_file / `python -m
// paired_replacement.pool_file write`):
//   header (kPoolFileAlign bytes, zero padded):
//     char     magic[8]       "PRPOOL01"
//     uint32   version        1
//     uint32   header_bytes   offset of record 0 (a multiple of kPoolFileAlign)
//     int64    rows, gate_cols, up_cols, hidden   (elements of a row: G, U, H; scales excluded)
//     uint32   elem_size      bytes per element
//     uint32   dtype_code     1 f32, 2 f16, 3 bf16, 4 f64 (informational), 5 int8 with per-row
//                             scales (kPoolFileInt8RowScaled: changes the record layout, below)
//     uint64   record_bytes   bytes per neuron record (a multiple of kPoolFileAlign)
//     uint64   concat_offset  gate|up of the neuron, (G + U) elements, within the record
//     uint64   down_offset    the neuron's column of down (H elements) within the record
//     uint32   header_crc32   CRC-32 (IEEE) of the 80 bytes above
//   record r at header_bytes + r * record_bytes: one neuron's gate row, up row and down column
//   together (LLM in a flash's row-column bundling), so one read fetches everything the neuron
//   needs; padding is zero.
//   dtype code 5 (int8 with per-row scales; elem_size 1; G, U, H multiples of 4): each of the
//   three segments -- gate row, up row, down column -- is its int8 values followed by its float32
//   scale (4 bytes, little-endian; value ~= q * scale), so the concat data is
//   [gate q (G) | gate scale | up q (U) | up scale] ((G + 4) + (U + 4) bytes; no gate: U + 4)
//   and the down data [down q (H) | down scale] (H + 4 bytes). The source hands the cache these
//   byte rows (PoolFileInfo::shape counts them, elem_size 1): the scales move with their rows in
//   the same copies, and every scale stays 4-byte aligned in the packed block. Files of codes
//   1-4 are unchanged by this code (no version bump); older readers refuse code 5.
//
// Invariants / guarantees
//   F1  A fetch reads exactly the records of the rows it is given, each once (record-aligned
//       offsets and lengths, so O_DIRECT needs no read-modify), and copies only the data bytes
//       into the packed slots (their padding stays zero).
//   F2  Reads run on kPoolFileQueueDepth threads at once (a persistent pool, created with the
//       source): the disk sees that queue depth. Each thread has one aligned staging run (F6).
//   F3  A failed or short read is reported, after all reads of the fetch have ended, by
//       std::runtime_error naming the file, the row and the error.
//   F4  bytes_read() counts the bytes the reads returned (records, not rows), since construction.
//   F5  Where a record is exactly its gate|up part followed by its down part and every piece is
//       kPoolFileAlign-aligned (record layout, packed addresses and row strides), a read goes
//       straight into the two packed slots (one preadv with two buffers: no staging copy;
//       scatter_reads() counts them); otherwise, or after a short read, through the staging
//       record. The bytes written into the packed rows are the same either way.
//   F6  Records of consecutive rows in one fetch are read together: the fetch's rows, in row
//       order, split into runs of consecutive rows of at most kPoolFileMaxReadBytes (at least one
//       record), and a run is one read (one preadv into its 2 x count packed slots under F5, else
//       one pread into the staging run). A disk that serves a few large reads faster than many
//       small ones (a virtual disk: ~440 MB/s for 8 KiB random reads at depth 16, ~1 GB/s for
//       64 KiB) then reads a dense set of rows at its large-read speed -- the full reload and
//       the paired update alike. reads() counts the reads. A failed or short run read is retried
//       record by record, so F3 names the row.
//   F7  Engine (io_engine()): on Linux with direct I/O the reads are Linux native AIO requests
//       submitted by the calling thread, queue_depth in flight, a completed one replaced at once
//       by the next (io_submit / io_getevents; the context, iocbs and events are made with the
//       source): no reader thread wakes for a fetch, which costs a small fetch (16 records at
//       depth 16: ~0.2 ms on the development VM) more than its reads. Elsewhere -- another OS,
//       buffered I/O (where AIO reads run synchronously inside io_submit), io_setup refused, or
//       IoEngine::kThreads asked for -- the persistent reader threads of F2 read. Both engines
//       read the same runs into the same places (F1, F5, F6) and report errors alike (F3).
// ---------------------------------------------------------------------------------------------
#pragma once

#include <fcntl.h>
#if defined(__linux__)
#include <linux/aio_abi.h>
#include <sys/syscall.h>
#define PAIRED_REPLACEMENT_LINUX_AIO 1
#endif
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "paired_replacement/weight_cache.hpp"

namespace paired_replacement {

// ---- Tuning constants ------------------------------------------------------------------------
// Alignment of the header, the records and every read (offset and length): the largest logical
// block size O_DIRECT asks for on common devices (512 B or 4 KiB). Power of two.
inline constexpr std::size_t kPoolFileAlign = 4096;
// Reads in flight at once (threads of a source). The disk of the development VM: 47 MB/s at depth
// 1, ~100 MB/s at 32 (random 16 KiB reads). >= 1.
inline constexpr int kPoolFileQueueDepth = 16;
// Largest read of adjacent records (F6): the development VM's disk reaches its large-read speed
// at 64 KiB (1.0 GB/s at depth 16) and gains nothing beyond 256 KiB; a larger cap would take
// parallelism from small fetches. A record larger than this is still read whole.
inline constexpr std::size_t kPoolFileMaxReadBytes = 128 * 1024;
// Who issues a source's reads (F7). kAuto: Linux native AIO where it works, else threads.
enum class IoEngine { kAuto, kThreads, kLinuxAio };

// The engine named by the environment variable PAIRED_REPLACEMENT_IO_ENGINE ("auto", "threads",
// "aio"; unset or empty: kAuto). Throws std::invalid_argument naming the variable and its value.
inline IoEngine io_engine_from_environment() {
  const char* v = std::getenv("PAIRED_REPLACEMENT_IO_ENGINE");
  const std::string value = v ? v : "";
  if (value.empty() || value == "auto") return IoEngine::kAuto;
  if (value == "threads") return IoEngine::kThreads;
  if (value == "aio") return IoEngine::kLinuxAio;
  throw std::invalid_argument("environment variable PAIRED_REPLACEMENT_IO_ENGINE must be auto, "
                              "threads or aio, got '" + value + "'");
}

inline constexpr char kPoolFileMagic[8] = {'P', 'R', 'P', 'O', 'O', 'L', '0', '1'};
inline constexpr std::uint32_t kPoolFileVersion = 1;
inline constexpr std::size_t kPoolFileHeaderFields = 80;  // bytes the CRC covers
// dtype_code of int8 rows that each carry a float32 scale of kPoolFileRowScaleBytes after them.
inline constexpr std::uint32_t kPoolFileInt8RowScaled = 5;
inline constexpr std::int64_t kPoolFileRowScaleBytes = 4;

namespace detail {

// CRC-32 (IEEE 802.3, reflected, as zlib.crc32), bitwise: the header is 80 bytes.
inline std::uint32_t crc32(const unsigned char* p, std::size_t n) noexcept {
  std::uint32_t c = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return c ^ 0xFFFFFFFFu;
}

template <class T>
T read_le(const unsigned char* p) noexcept {  // the hosts this targets are little-endian
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

struct AlignedFree {
  void operator()(std::byte* p) const noexcept { ::operator delete(p, std::align_val_t{kPoolFileAlign}); }
};

}  // namespace detail

// What the header of a pool file says (see the file format above). `shape` is what the cache
// copies: for dtype code 5 its column counts include the row scales (G + 4 or 0, U + 4, H + 4
// bytes), `logical` holds the header's G, U, H; for the other codes the two are equal.
struct PoolFileInfo {
  Shape shape, logical;
  std::uint32_t dtype_code = 0;
  std::int64_t row_scale_bytes = 0;  // kPoolFileRowScaleBytes for dtype code 5, else 0
  std::uint64_t header_bytes = 0, record_bytes = 0, concat_offset = 0, down_offset = 0;
};

// Reads and checks the header of `path`. Throws std::runtime_error naming the file and what is
// wrong (missing, not a pool file, damaged header, truncated data, inconsistent layout).
inline PoolFileInfo read_pool_file_header(const std::string& path) {
  const auto fail = [&](const std::string& what) {
    throw std::runtime_error("pool file " + path + ": " + what);
  };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(std::string("cannot open (") + std::strerror(errno) + ")");
  unsigned char h[kPoolFileHeaderFields + 4] = {};
  const ssize_t got = ::pread(fd, h, sizeof h, 0);
  struct stat st {};
  const int stat_rc = ::fstat(fd, &st);
  ::close(fd);
  if (got != static_cast<ssize_t>(sizeof h)) fail("shorter than a header");
  if (std::memcmp(h, kPoolFileMagic, 8) != 0) fail("not a pool file (magic differs)");
  if (detail::read_le<std::uint32_t>(h + kPoolFileHeaderFields) != detail::crc32(h, kPoolFileHeaderFields))
    fail("damaged header (CRC-32 differs)");
  if (detail::read_le<std::uint32_t>(h + 8) != kPoolFileVersion)
    fail("version " + std::to_string(detail::read_le<std::uint32_t>(h + 8)) + ", this code reads " +
         std::to_string(kPoolFileVersion));
  PoolFileInfo info;
  info.header_bytes = detail::read_le<std::uint32_t>(h + 12);
  info.shape.rows = detail::read_le<std::int64_t>(h + 16);
  info.shape.gate_cols = detail::read_le<std::int64_t>(h + 24);
  info.shape.up_cols = detail::read_le<std::int64_t>(h + 32);
  info.shape.hidden = detail::read_le<std::int64_t>(h + 40);
  info.shape.elem_size = detail::read_le<std::uint32_t>(h + 48);
  info.dtype_code = detail::read_le<std::uint32_t>(h + 52);
  info.record_bytes = detail::read_le<std::uint64_t>(h + 56);
  info.concat_offset = detail::read_le<std::uint64_t>(h + 64);
  info.down_offset = detail::read_le<std::uint64_t>(h + 72);
  try {
    info.shape.validate();
  } catch (const std::invalid_argument& e) {
    fail(std::string("bad shape in header (") + e.what() + ")");
  }
  info.logical = info.shape;
  if (info.dtype_code == kPoolFileInt8RowScaled) {
    if (info.shape.elem_size != 1)
      fail("dtype code 5 (int8 with per-row scales) needs elem_size 1, got " +
           std::to_string(info.shape.elem_size));
    const std::pair<const char*, std::int64_t> cols[] = {{"gate_cols", info.shape.gate_cols},
                                                         {"up_cols", info.shape.up_cols},
                                                         {"hidden", info.shape.hidden}};
    for (const auto& [name, value] : cols)
      if (value % kPoolFileRowScaleBytes != 0)
        fail(std::string(name) + " " + std::to_string(value) + " is not a multiple of 4 (dtype "
             "code 5 keeps the float32 row scales 4-byte aligned)");
    info.row_scale_bytes = kPoolFileRowScaleBytes;
    if (info.shape.gate_cols > 0) info.shape.gate_cols += kPoolFileRowScaleBytes;
    info.shape.up_cols += kPoolFileRowScaleBytes;
    info.shape.hidden += kPoolFileRowScaleBytes;
    try {
      info.shape.validate();
    } catch (const std::invalid_argument& e) {
      fail(std::string("bad shape in header (") + e.what() + ")");
    }
  }
  const std::uint64_t es = info.shape.elem_size;
  const std::uint64_t concat = static_cast<std::uint64_t>(info.shape.gate_cols + info.shape.up_cols) * es;
  const std::uint64_t down = static_cast<std::uint64_t>(info.shape.hidden) * es;
  if (info.header_bytes % kPoolFileAlign != 0 || info.record_bytes % kPoolFileAlign != 0 ||
      info.record_bytes == 0 || info.concat_offset + concat > info.record_bytes ||
      info.down_offset + down > info.record_bytes ||
      (info.concat_offset < info.down_offset ? info.concat_offset + concat > info.down_offset
                                             : info.down_offset + down > info.concat_offset))
    fail("inconsistent record layout in header");
  const std::uint64_t need = info.header_bytes + info.record_bytes * static_cast<std::uint64_t>(info.shape.rows);
  if (stat_rc != 0 || static_cast<std::uint64_t>(st.st_size) < need)
    fail("truncated: " + std::to_string(stat_rc == 0 ? st.st_size : -1) + " bytes, the header "
         "needs " + std::to_string(need));
  return info;
}

// The slow tier: a pool file read with direct I/O by a small pool of threads.
class FileRowSource final : public RowSource {
 public:
  // Opens `path` (O_DIRECT when the file system supports it; otherwise buffered reads with the
  // page cache dropped for each record after reading it, and direct_io() says so) and sets up
  // its engine (F7): a Linux AIO context of `queue_depth` requests, or `queue_depth` reader
  // threads. Throws std::runtime_error (see read_pool_file_header; or IoEngine::kLinuxAio asked
  // for where it cannot run) or std::invalid_argument for queue_depth < 1.
  explicit FileRowSource(const std::string& path, int queue_depth = kPoolFileQueueDepth,
                         IoEngine engine = IoEngine::kAuto)
      : path_(path), info_(read_pool_file_header(path)) {
    if (queue_depth < 1) throw std::invalid_argument("queue_depth must be >= 1");
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
    direct_ = fd_ >= 0;
    if (!direct_) fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0)
      throw std::runtime_error("pool file " + path + ": cannot open (" + std::strerror(errno) + ")");
    {  // F5: can a record land in its two packed slots with one aligned read?
      const std::uint64_t es = info_.shape.elem_size;
      const std::uint64_t concat = static_cast<std::uint64_t>(info_.shape.gate_cols + info_.shape.up_cols) * es;
      const std::uint64_t down = static_cast<std::uint64_t>(info_.shape.hidden) * es;
      scatter_layout_ = direct_ && info_.concat_offset == 0 && info_.down_offset == concat &&
                        concat + down == info_.record_bytes && concat % kPoolFileAlign == 0 &&
                        down % kPoolFileAlign == 0;
      concat_bytes_ = static_cast<std::size_t>(concat);
      down_bytes_ = static_cast<std::size_t>(down);
    }
    run_records_ = std::max<std::int64_t>(
        1, static_cast<std::int64_t>(kPoolFileMaxReadBytes / info_.record_bytes));
    staging_.reserve(static_cast<std::size_t>(queue_depth));
    for (int i = 0; i < queue_depth; ++i)
      staging_.emplace_back(static_cast<std::byte*>(::operator new(
          info_.record_bytes * static_cast<std::size_t>(run_records_), std::align_val_t{kPoolFileAlign})));
    iovecs_.assign(static_cast<std::size_t>(queue_depth) * 2 * static_cast<std::size_t>(run_records_), iovec{});
    if (engine != IoEngine::kThreads && (direct_ || engine == IoEngine::kLinuxAio)) {
      std::string why;
      if (!setup_aio(queue_depth, why) && engine == IoEngine::kLinuxAio) {
        ::close(fd_);
        throw std::runtime_error("pool file " + path + ": Linux AIO asked for, but " + why);
      }
    }
    if (aio_) return;
    try {
      for (int i = 1; i < queue_depth; ++i) threads_.emplace_back([this, i] { worker(i); });
    } catch (...) {
      stop();
      ::close(fd_);
      throw;
    }
  }

  ~FileRowSource() override {
    stop();
#ifdef PAIRED_REPLACEMENT_LINUX_AIO
    if (aio_) ::syscall(SYS_io_destroy, aio_ctx_);
#endif
    ::close(fd_);
  }
  FileRowSource(const FileRowSource&) = delete;
  FileRowSource& operator=(const FileRowSource&) = delete;

  const Shape& shape() const noexcept override { return info_.shape; }
  const PoolFileInfo& info() const noexcept { return info_; }
  const std::string& path() const noexcept { return path_; }
  bool direct_io() const noexcept { return direct_; }
  // "linux-aio" or "threads" (F7).
  const char* io_engine() const noexcept { return aio_ ? "linux-aio" : "threads"; }
  int queue_depth() const noexcept { return static_cast<int>(staging_.size()); }
  std::uint64_t bytes_read() const noexcept override { return bytes_read_.load(); }
  // Records read straight into their packed slots (F5), since construction.
  std::uint64_t scatter_reads() const noexcept { return scatter_reads_.load(); }
  // Reads issued (a run of adjacent records is one, F6), since construction.
  std::uint64_t reads() const noexcept { return reads_.load(); }
  // Most records one read takes (F6): max(1, kPoolFileMaxReadBytes / record bytes).
  std::int64_t run_records() const noexcept { return run_records_; }

  // See RowSource::fetch. Not reentrant: one fetch at a time (the cache calls it from its update).
  void fetch(std::int64_t n, const std::int32_t* slots, const std::int32_t* rows,
             std::byte* packed_concat, std::size_t concat_ld, std::byte* packed_down,
             std::size_t down_ld) override {
    if (n <= 0) return;
    const auto aligned = [](const void* p, std::size_t ld) {
      return reinterpret_cast<std::uintptr_t>(p) % kPoolFileAlign == 0 && ld % kPoolFileAlign == 0;
    };
    const bool scatter = scatter_layout_ && aligned(packed_concat, concat_ld) &&
                         aligned(packed_down, down_ld);
    plan_runs(n, rows);
    if (aio_) {
      job_ = Job{n, slots, rows, packed_concat, concat_ld, packed_down, down_ld, scatter};
      error_row_ = -1;
      error_what_.clear();
      fetch_aio();
      if (error_row_ >= 0)
        throw std::runtime_error("pool file " + path_ + ": reading row " +
                                 std::to_string(error_row_) + " failed (" + error_what_ + ")");
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = Job{n, slots, rows, packed_concat, concat_ld, packed_down, down_ld, scatter};
      next_.store(0);
      error_row_ = -1;
      error_what_.clear();
      busy_ = static_cast<int>(threads_.size());
      ++generation_;
    }
    wake_.notify_all();
    run(0);  // the calling thread is reader 0
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [this] { return busy_ == 0; });
    if (error_row_ >= 0)
      throw std::runtime_error("pool file " + path_ + ": reading row " +
                               std::to_string(error_row_) + " failed (" + error_what_ + ")");
  }

  // One record's data into `concat` ((G + U) elements) and `down` (H elements): for checks.
  void read_row(std::int64_t row, std::byte* concat, std::byte* down) {
    const std::int32_t slot = 0, r = static_cast<std::int32_t>(row);
    const std::size_t es = info_.shape.elem_size;
    fetch(1, &slot, &r, concat, static_cast<std::size_t>(info_.shape.gate_cols + info_.shape.up_cols) * es,
          down, static_cast<std::size_t>(info_.shape.hidden) * es);
  }

 private:
  // F6: order_ = the fetch's indices in row order; runs_ = (first position in order_, count) of
  // each run of consecutive rows, at most run_records_ long. Called before the readers wake.
  void plan_runs(std::int64_t n, const std::int32_t* rows) {
    order_.resize(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) order_[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i);
    if (!std::is_sorted(rows, rows + n))  // the rebuild fetches in row order already
      std::sort(order_.begin(), order_.end(), [rows](std::int32_t a, std::int32_t b) { return rows[a] < rows[b]; });
    runs_.clear();
    for (std::int64_t i = 0; i < n;) {
      std::int64_t c = 1;
      while (i + c < n && c < run_records_ &&
             rows[order_[static_cast<std::size_t>(i + c)]] == rows[order_[static_cast<std::size_t>(i + c - 1)]] + 1)
        ++c;
      runs_.push_back({i, c});
      i += c;
    }
  }

  struct Run {
    std::int64_t first = 0, count = 0;  // positions [first, first + count) of order_
  };

  struct Job {
    std::int64_t n = 0;
    const std::int32_t* slots = nullptr;
    const std::int32_t* rows = nullptr;
    std::byte* pc = nullptr;
    std::size_t lc = 0;
    std::byte* pd = nullptr;
    std::size_t ld = 0;
    bool scatter = false;  // F5: read straight into the packed slots
  };

  void worker(int id) {
    std::uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
      }
      run(id);
      {
        std::lock_guard<std::mutex> lock(mu_);
        --busy_;
      }
      done_.notify_all();
    }
  }

  // Claims runs of the current job one by one (F6) and reads each with one read, straight into
  // the packed slots (F5) or through this reader's staging run; a run whose read fails or comes
  // back short is read again record by record (read_record), which names a bad row (F3).
  void run(int id) noexcept {
    std::byte* const buf = staging_[static_cast<std::size_t>(id)].get();
    iovec* const iov = iovecs_.data() + static_cast<std::size_t>(id) * 2 * static_cast<std::size_t>(run_records_);
    const Job job = job_;  // written before the generation changed (under the mutex)
    const std::size_t rec = info_.record_bytes;
    const auto n_runs = static_cast<std::int64_t>(runs_.size());
    for (std::int64_t j = next_.fetch_add(1); j < n_runs; j = next_.fetch_add(1)) {
      const Run run = runs_[static_cast<std::size_t>(j)];
      const std::int32_t* const idx = order_.data() + run.first;
      const std::size_t count = static_cast<std::size_t>(run.count);
      const std::size_t want = rec * count;
      const auto offset = static_cast<off_t>(info_.header_bytes + rec * static_cast<std::uint64_t>(job.rows[idx[0]]));
      PAIRED_REPLACEMENT_ASSERT(count >= 1 && run.count <= run_records_);
      if (job.scatter) {  // F5: both slots of every record of the run, one preadv
        fill_iovecs(job, idx, count, iov);
        ssize_t k;
        do {
          k = ::preadv(fd_, iov, static_cast<int>(2 * count), offset);
        } while (k < 0 && errno == EINTR);
        if (k > 0) bytes_read_.fetch_add(static_cast<std::uint64_t>(k));
        reads_.fetch_add(1);
        if (k == static_cast<ssize_t>(want)) {
          scatter_reads_.fetch_add(count);
          continue;
        }
      } else {
        std::size_t got = 0;
        while (got < want) {
          const ssize_t k = ::pread(fd_, buf + got, want - got, offset + static_cast<off_t>(got));
          if (k < 0 && errno == EINTR) continue;
          if (k <= 0) break;
          got += static_cast<std::size_t>(k);
        }
        if (!direct_) ::posix_fadvise(fd_, offset, static_cast<off_t>(want), POSIX_FADV_DONTNEED);
        bytes_read_.fetch_add(got);
        reads_.fetch_add(1);
        if (got == want) {
          copy_out(job, idx, count, buf);
          continue;
        }
      }
      for (std::size_t r = 0; r < count; ++r) read_record(job, idx[r], buf);
    }
  }

  // The data of `count` records read whole into the staging run `buf` (the job's indices idx[0..
  // count), consecutive rows) into their packed slots; the records' padding is not copied (F1).
  void copy_out(const Job& job, const std::int32_t* idx, std::size_t count, const std::byte* buf) const noexcept {
    const std::size_t rec = info_.record_bytes;
    for (std::size_t r = 0; r < count; ++r) {
      const auto s = static_cast<std::size_t>(job.slots[idx[r]]);
      std::memcpy(job.pc + s * job.lc, buf + r * rec + info_.concat_offset, concat_bytes_);
      std::memcpy(job.pd + s * job.ld, buf + r * rec + info_.down_offset, down_bytes_);
    }
  }

  // F5: the 2 x `count` buffers of a run read straight into its packed slots (each record's
  // gate|up slot, then its down slot).
  void fill_iovecs(const Job& job, const std::int32_t* idx, std::size_t count, iovec* iov) const noexcept {
    for (std::size_t r = 0; r < count; ++r) {
      const auto s = static_cast<std::size_t>(job.slots[idx[r]]);
      iov[2 * r] = {job.pc + s * job.lc, concat_bytes_};
      iov[2 * r + 1] = {job.pd + s * job.ld, down_bytes_};
    }
  }

  // One record through the staging buffer (the fallback of a failed run read): copies its data
  // into its slots, or records the first error of the fetch (F3).
  void read_record(const Job& job, std::int32_t i, std::byte* buf) noexcept {
    const std::int32_t r = job.rows[i];
    const auto offset = static_cast<off_t>(info_.header_bytes + info_.record_bytes * static_cast<std::uint64_t>(r));
    std::size_t got = 0;
    int err = 0;
    while (got < info_.record_bytes) {
      const ssize_t k = ::pread(fd_, buf + got, info_.record_bytes - got, offset + static_cast<off_t>(got));
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) {
        err = k < 0 ? errno : 0;
        break;
      }
      got += static_cast<std::size_t>(k);
    }
    if (!direct_) ::posix_fadvise(fd_, offset, static_cast<off_t>(info_.record_bytes), POSIX_FADV_DONTNEED);
    bytes_read_.fetch_add(got);
    reads_.fetch_add(1);
    if (got < info_.record_bytes) {
      std::lock_guard<std::mutex> lock(mu_);
      if (error_row_ < 0) {
        error_row_ = r;
        error_what_ = err ? std::strerror(err) : "short read: " + std::to_string(got) + " of " +
                                                      std::to_string(info_.record_bytes) + " bytes";
      }
      return;
    }
    copy_out(job, &i, 1, buf);
  }

  // F7: a context for `queue_depth` requests, one iocb per slot (slot i uses staging_[i] and its
  // iovecs). Returns false (and why) where Linux AIO cannot run; the source then uses threads.
  bool setup_aio(int queue_depth, std::string& why) {
#ifdef PAIRED_REPLACEMENT_LINUX_AIO
    aio_context_t ctx = 0;
    if (::syscall(SYS_io_setup, queue_depth, &ctx) != 0) {
      why = std::string("io_setup failed (") + std::strerror(errno) + ")";
      return false;
    }
    aio_ctx_ = ctx;
    const auto qd = static_cast<std::size_t>(queue_depth);
    iocbs_.assign(qd, iocb{});
    submit_.assign(qd, nullptr);
    events_.assign(qd, io_event{});
    slot_run_.assign(qd, 0);
    free_slots_.reserve(qd);
    aio_ = true;
    return true;
#else
    (void)queue_depth;
    why = "this system has no Linux native AIO";
    return false;
#endif
  }

#ifdef PAIRED_REPLACEMENT_LINUX_AIO
  // The iocb of slot `slot` for run `j` of the current job: a preadv into the run's packed slots
  // (F5) or a pread into the slot's staging run.
  iocb* prepare(std::size_t slot, std::int64_t j) noexcept {
    const Job& job = job_;
    const Run run = runs_[static_cast<std::size_t>(j)];
    const std::int32_t* const idx = order_.data() + run.first;
    const std::size_t rec = info_.record_bytes, count = static_cast<std::size_t>(run.count);
    iocb& cb = iocbs_[slot];
    cb = iocb{};
    cb.aio_data = slot;
    cb.aio_fildes = static_cast<std::uint32_t>(fd_);
    cb.aio_offset = static_cast<std::int64_t>(info_.header_bytes + rec * static_cast<std::uint64_t>(job.rows[idx[0]]));
    if (job.scatter) {
      iovec* const iov = iovecs_.data() + slot * 2 * static_cast<std::size_t>(run_records_);
      fill_iovecs(job, idx, count, iov);
      cb.aio_lio_opcode = IOCB_CMD_PREADV;
      cb.aio_buf = reinterpret_cast<std::uintptr_t>(iov);
      cb.aio_nbytes = 2 * count;  // iovec count
    } else {
      cb.aio_lio_opcode = IOCB_CMD_PREAD;
      cb.aio_buf = reinterpret_cast<std::uintptr_t>(staging_[slot].get());
      cb.aio_nbytes = rec * count;
    }
    slot_run_[slot] = j;
    return &cb;
  }

  // A run's read ended with `res` (bytes, or -errno): copy it out of the staging run (or count
  // the scatter read), or read it again record by record (F6), which records an error (F3).
  void complete(std::size_t slot, std::int64_t res) noexcept {
    const Job& job = job_;
    const Run run = runs_[static_cast<std::size_t>(slot_run_[slot])];
    const std::int32_t* const idx = order_.data() + run.first;
    const std::size_t rec = info_.record_bytes, count = static_cast<std::size_t>(run.count);
    if (res > 0) bytes_read_.fetch_add(static_cast<std::uint64_t>(res));
    reads_.fetch_add(1);
    std::byte* const buf = staging_[slot].get();
    if (res == static_cast<std::int64_t>(rec * count)) {
      if (job.scatter) {
        scatter_reads_.fetch_add(count);
        return;
      }
      copy_out(job, idx, count, buf);
      return;
    }
    for (std::size_t r = 0; r < count; ++r) read_record(job, idx[r], buf);
  }
#endif

  // F7: the runs of the current job, queue_depth in flight, from the calling thread. A request
  // the kernel refuses to take is read synchronously instead (complete() with -errno).
  void fetch_aio() noexcept {
#ifdef PAIRED_REPLACEMENT_LINUX_AIO
    const auto n_runs = static_cast<std::int64_t>(runs_.size());
    const std::size_t qd = iocbs_.size();
    free_slots_.clear();
    for (std::size_t s = qd; s-- > 0;) free_slots_.push_back(s);
    std::int64_t next = 0;
    std::size_t inflight = 0;
    while (inflight > 0 || next < n_runs) {
      std::size_t batch = 0;
      while (!free_slots_.empty() && next < n_runs) {
        const std::size_t slot = free_slots_.back();
        free_slots_.pop_back();
        submit_[batch++] = prepare(slot, next++);
      }
      for (std::size_t done = 0; done < batch;) {
        const long got = ::syscall(SYS_io_submit, aio_ctx_, static_cast<long>(batch - done), submit_.data() + done);
        if (got > 0) {
          done += static_cast<std::size_t>(got);
          inflight += static_cast<std::size_t>(got);
          continue;
        }
        if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        // refused (or nothing taken): this request is read synchronously, the rest retried
        const auto slot = static_cast<std::size_t>(submit_[done]->aio_data);
        complete(slot, got < 0 ? -static_cast<std::int64_t>(errno) : 0);
        free_slots_.push_back(slot);
        ++done;
      }
      if (inflight == 0) continue;
      long got;
      do {
        got = ::syscall(SYS_io_getevents, aio_ctx_, 1L, static_cast<long>(qd), events_.data(), nullptr);
      } while (got < 0 && errno == EINTR);
      PAIRED_REPLACEMENT_ASSERT(got > 0);
      if (got <= 0) {  // the context is gone or broken: nothing in flight can be trusted
        std::lock_guard<std::mutex> lock(mu_);
        if (error_row_ < 0) {
          error_row_ = job_.rows[order_[static_cast<std::size_t>(runs_[0].first)]];
          error_what_ = std::string("io_getevents failed (") + std::strerror(errno) + ")";
        }
        return;
      }
      for (long e = 0; e < got; ++e) {
        const auto slot = static_cast<std::size_t>(events_[static_cast<std::size_t>(e)].data);
        complete(slot, static_cast<std::int64_t>(events_[static_cast<std::size_t>(e)].res));
        free_slots_.push_back(slot);
        --inflight;
      }
    }
#endif
  }

  void stop() noexcept {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

  std::string path_;
  PoolFileInfo info_;
  int fd_ = -1;
  bool direct_ = false;
  std::vector<std::unique_ptr<std::byte, detail::AlignedFree>> staging_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable wake_, done_;
  std::uint64_t generation_ = 0;
  bool stopping_ = false;
  int busy_ = 0;
  Job job_;
  std::atomic<std::int64_t> next_{0};
  std::atomic<std::uint64_t> bytes_read_{0};
  std::atomic<std::uint64_t> scatter_reads_{0};
  std::atomic<std::uint64_t> reads_{0};
  std::int64_t run_records_ = 1;              // F6: most records per read
  std::vector<std::int32_t> order_;           // F6: the fetch's indices in row order
  std::vector<Run> runs_;                     // F6: runs of consecutive rows
  std::vector<iovec> iovecs_;                 // F5: 2 x run_records_ per reader
  bool aio_ = false;                          // F7: Linux native AIO reads
#ifdef PAIRED_REPLACEMENT_LINUX_AIO
  aio_context_t aio_ctx_ = 0;
  std::vector<iocb> iocbs_;                   // one per slot (queue_depth)
  std::vector<iocb*> submit_;                 // the batch being submitted
  std::vector<io_event> events_;
  std::vector<std::int64_t> slot_run_;        // the run each slot reads
  std::vector<std::size_t> free_slots_;
#endif
  bool scatter_layout_ = false;
  std::size_t concat_bytes_ = 0, down_bytes_ = 0;  // data bytes of a record's two parts  // F5's conditions on the file (the job checks the buffers)
  std::int64_t error_row_ = -1;
  std::string error_what_;
};

}  // namespace paired_replacement

// PyTorch binding of the header-only core: torch.classes.paired.WeightCache and torch.ops.paired.*.
// Thin by design: check the tensors (TORCH_CHECK*, naming the argument), convert, call the core.
// Exceptions map to Python as: TORCH_CHECK_TYPE -> TypeError, TORCH_CHECK_VALUE -> ValueError,
// TORCH_CHECK_INDEX -> IndexError.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <atomic>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>

#include "paired_replacement/file_pool.hpp"
#include "paired_replacement/row_ffn.hpp"
#include "paired_replacement/weight_cache.hpp"

namespace {

namespace core = paired_replacement;

// Dense (strided, non-nested) tensors only: a sparse or otherwise non-strided tensor would fail
// later with a message that names no argument ("Cannot access data pointer ...").
const char* python_layout_name(at::Layout layout) {
  switch (layout) {
    case at::kStrided: return "torch.strided";
    case at::kSparse: return "torch.sparse_coo";
    case at::kSparseCsr: return "torch.sparse_csr";
    case at::kSparseCsc: return "torch.sparse_csc";
    case at::kSparseBsr: return "torch.sparse_bsr";
    case at::kSparseBsc: return "torch.sparse_bsc";
    case at::kMkldnn: return "torch._mkldnn";
    case at::kJagged: return "torch.jagged";
    default: return "(unknown)";
  }
}

void check_strided(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.defined(), name, " is undefined");
  TORCH_CHECK_VALUE(t.layout() == at::kStrided && !t.is_nested(), name,
                    " must be a dense (strided) tensor, got layout ", python_layout_name(t.layout()),
                    t.is_nested() ? " (nested)" : "");
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name,
                    " must be on the CPU (the cache keeps its packed block in host memory), got ",
                    t.device());
}

// A bool mask of N entries on the CPU. Any stride is fine (read in place, never copied).
void check_mask(const at::Tensor& mask, int64_t n, const char* name) {
  check_strided(mask, name);
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool, name, " must have dtype torch.bool, got ",
                   mask.scalar_type(), " (a numeric mask is not reinterpreted; pass mask != 0)");
  check_cpu(mask, name);
  TORCH_CHECK_VALUE(mask.dim() == 1, name, " must be 1-D with N = ", n, " entries, got shape ",
                    mask.sizes());
  TORCH_CHECK_VALUE(mask.size(0) == n, name, " must have N = ", n, " entries, got ",
                    mask.size(0));
}

void check_weight(const at::Tensor& w, const char* name, at::ScalarType dtype) {
  check_strided(w, name);
  TORCH_CHECK_VALUE(w.dim() == 2, name, " must be 2-D, got shape ", w.sizes());
  TORCH_CHECK_TYPE(w.scalar_type() == dtype, name, " must have dtype ", dtype,
                   " like up_weight, got ", w.scalar_type());
  check_cpu(w, name);
  TORCH_CHECK_VALUE(w.is_contiguous(), name, " must be contiguous (call .contiguous())");
}

void check_index_list(const at::Tensor& t, const char* name) {
  check_strided(t, name);
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, name, " must have dtype torch.int64, got ",
                   t.scalar_type());
  check_cpu(t, name);
  TORCH_CHECK_VALUE(t.dim() == 1, name, " must be 1-D, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// Runs the core's parallel row copies on ATen's intra-op pool (torch.set_num_threads applies).
struct AtenParallelFor {
  template <class Body>
  void operator()(int64_t begin, int64_t end, int64_t grain, const Body& body) const {
    at::parallel_for(begin, end, grain, body);
  }
};

// Calls f(), turning the core's std:: exceptions into the matching Python exception types
// (std::runtime_error, e.g. a pool file that cannot be read, becomes RuntimeError).
template <class F>
decltype(auto) translate_errors(F&& f) {
  try {
    return f();
  } catch (const std::out_of_range& e) {
    TORCH_CHECK_INDEX(false, e.what());
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  } catch (const std::runtime_error& e) {
    TORCH_CHECK(false, e.what());
  }
}

// An update of a cache on a RowSource that failed to read a row: the core has reset the cache
// to no active row (see core::WeightCache::update_from_mask); say so.
template <class F>
void run_update(F&& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    TORCH_CHECK(false, e.what(), "; the cache was reset to no active row (update it again to "
                "reload the rows it needs)");
  }
}

at::ScalarType dtype_of_pool_file(std::uint32_t code, const std::string& path) {
  TORCH_CHECK_VALUE(code != core::kPoolFileInt8RowScaled, "pool file ", path, ": dtype code 5 is "
                    "int8 rows with per-row scales; open it with "
                    "paired_replacement.quant.QuantizedWeightCache.from_pool_file");
  switch (code) {
    case 1: return at::kFloat;
    case 2: return at::kHalf;
    case 3: return at::kBFloat16;
    default:
      TORCH_CHECK_VALUE(false, "pool file ", path, ": dtype code ", code,
                        " is not float32 (1), float16 (2) or bfloat16 (3)");
  }
}

// A 2-D uint8 matrix of byte rows (from_byte_rows): dense, contiguous, on the CPU.
void check_byte_rows(const at::Tensor& t, const char* name) {
  check_strided(t, name);
  TORCH_CHECK_VALUE(t.dim() == 2, name, " must be 2-D, got shape ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kByte, name, " must have dtype torch.uint8 (byte rows), "
                   "got ", t.scalar_type());
  check_cpu(t, name);
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous (call .contiguous())");
}

// One cache must not be used by two threads at once, and Python threads can reach it at once:
// the dispatcher releases the GIL around every method. A guard marks the cache in use for the
// duration of one call: updates and settings changes take it exclusively, observers share it.
// A call that would overlap a conflicting one raises RuntimeError at once, before touching
// anything, rather than corrupting the cache (or blocking, which could deadlock a caller that
// holds the GIL).
class UseGuard {
 public:
  enum Mode { kRead, kWrite };
  static constexpr int64_t kWriter = -1;  // users_ while an update runs; > 0: that many readers

  UseGuard(std::atomic<int64_t>& users, Mode mode, const char* method) : users_(users) {
    int64_t seen = 0;
    if (mode == kWrite) {
      if (!users_.compare_exchange_strong(seen, kWriter, std::memory_order_acquire))
        refuse(method, seen);
      delta_ = kWriter;
      return;
    }
    seen = users_.load(std::memory_order_relaxed);
    do {
      if (seen < 0) refuse(method, seen);
    } while (!users_.compare_exchange_weak(seen, seen + 1, std::memory_order_acquire));
    delta_ = 1;
  }
  ~UseGuard() { users_.fetch_sub(delta_, std::memory_order_release); }
  UseGuard(const UseGuard&) = delete;
  UseGuard& operator=(const UseGuard&) = delete;

 private:
  [[noreturn]] static void refuse(const char* method, int64_t seen) {
    TORCH_CHECK(false, "WeightCache.", method, ": the cache is being ",
                seen < 0 ? "updated" : "read", " by another thread. A WeightCache is not "
                "thread-safe: use one per thread, or hold a lock around every call to it.");
  }
  std::atomic<int64_t>& users_;
  int64_t delta_ = 0;
};

// A tensor viewing `bytes` of the core's shared buffer; the view's storage holds a reference to the
// buffer, so it stays valid after the cache is gone.
at::Tensor view_of(const std::shared_ptr<std::byte>& owner, int64_t rows, int64_t cols,
                   size_t ld_bytes, at::ScalarType dtype) {
  const auto elem = static_cast<int64_t>(c10::elementSize(dtype));
  return at::from_blob(
      owner.get(), {rows, cols}, {static_cast<int64_t>(ld_bytes) / elem, 1},
      [keep = owner](void*) mutable { keep.reset(); }, at::TensorOptions().dtype(dtype));
}

class WeightCache : public torch::CustomClassHolder {
 public:
  // Seed-compatible: mask [N] bool, gate and up [N, hidden_size], down [hidden_size, N]. No gate:
  // has_gate=false (gate_weight is then ignored) or an empty 1-D gate (torch.empty(0)). Settings
  // given here win over the WEIGHT_CACHE_* environment variables, which are then not read.
  WeightCache(const at::Tensor& mask, int64_t hidden_size, const at::Tensor& gate_weight,
              const at::Tensor& up_weight, const at::Tensor& down_weight, bool has_gate,
              std::optional<int64_t> grain, std::optional<int64_t> par_threshold,
              std::optional<double> hybrid_tau_frac)
      : cache_(make_core(mask, hidden_size, gate_weight, up_weight, down_weight, has_gate,
                         core::SettingOverrides{grain, par_threshold, hybrid_tau_frac}, dtype_)) {
    make_views();
  }

  // Wraps a built core cache whose elements are `dtype`: a cache on a pool file (file_pool.hpp,
  // read with direct I/O by `queue_depth` threads: only the packed rows live in memory; the shape
  // and dtype are the file's), or with an empty pool_path one over in-memory byte rows
  // (from_byte_rows).
  WeightCache(core::WeightCache&& cache, at::ScalarType dtype, std::string pool_path)
      : dtype_(dtype), cache_(std::move(cache)), pool_path_(std::move(pool_path)) {
    make_views();
  }

  static c10::intrusive_ptr<WeightCache> from_pool_file(
      const std::string& path, const at::Tensor& mask, int64_t queue_depth,
      std::optional<int64_t> grain, std::optional<int64_t> par_threshold,
      std::optional<double> hybrid_tau_frac) {
    return open_pool_file(path, mask, queue_depth, grain, par_threshold, hybrid_tau_frac, false);
  }

  // A cache on a pool file of dtype code 5 (int8 rows, each followed by its float32 scale; see
  // file_pool.hpp): a torch.uint8 cache of those byte rows, like from_byte_rows. The Python
  // layer (paired_replacement.quant) views the values as int8 and the scales as float32.
  static c10::intrusive_ptr<WeightCache> from_int8_pool_file(
      const std::string& path, const at::Tensor& mask, int64_t queue_depth,
      std::optional<int64_t> grain, std::optional<int64_t> par_threshold,
      std::optional<double> hybrid_tau_frac) {
    return open_pool_file(path, mask, queue_depth, grain, par_threshold, hybrid_tau_frac, true);
  }

  // A cache over rows of raw bytes: the core copies bytes and never looks inside an element, so
  // a caller can pack anything into a row (paired_replacement.quant packs int8 values and their
  // float32 scale). gate_bytes [N, Gb] (or an empty 1-D tensor: no gate), up_bytes [N, Ub],
  // down_bytes [Hb, N] (its columns are the down^T rows, as in the main constructor), all
  // torch.uint8; Gb, Ub and Hb are independent. The getters return torch.uint8 views.
  static c10::intrusive_ptr<WeightCache> from_byte_rows(
      const at::Tensor& mask, const at::Tensor& gate_bytes, const at::Tensor& up_bytes,
      const at::Tensor& down_bytes, std::optional<int64_t> grain,
      std::optional<int64_t> par_threshold, std::optional<double> hybrid_tau_frac) {
    check_byte_rows(up_bytes, "up_bytes");
    const int64_t n = up_bytes.size(0);
    TORCH_CHECK_VALUE(n >= 1 && up_bytes.size(1) >= 1,
                      "up_bytes must have at least one row and one column, got shape ",
                      up_bytes.sizes());
    check_byte_rows(down_bytes, "down_bytes");
    TORCH_CHECK_VALUE(down_bytes.size(1) == n && down_bytes.size(0) >= 1,
                      "down_bytes must have shape [Hb, N] with N = ", n, " and Hb >= 1, got ",
                      down_bytes.sizes());
    check_strided(gate_bytes, "gate_bytes");
    const bool use_gate = !(gate_bytes.dim() == 1 && gate_bytes.size(0) == 0);
    if (use_gate) {
      check_byte_rows(gate_bytes, "gate_bytes");
      TORCH_CHECK_VALUE(gate_bytes.size(0) == n && gate_bytes.size(1) >= 1,
                        "gate_bytes must have shape [N, Gb] with N = ", n, " and Gb >= 1 (or be "
                        "an empty 1-D tensor for no gate), got ", gate_bytes.sizes());
    }
    check_mask(mask, n, "mask");
    core::Shape shape;
    shape.rows = n;
    shape.gate_cols = use_gate ? gate_bytes.size(1) : 0;
    shape.up_cols = up_bytes.size(1);
    shape.hidden = down_bytes.size(0);
    shape.elem_size = 1;
    auto cache = translate_errors([&] {
      const core::Settings settings = core::Settings::from_environment(
          core::SettingOverrides{grain, par_threshold, hybrid_tau_frac});
      return core::WeightCache(shape, use_gate ? gate_bytes.data_ptr() : nullptr,
                               up_bytes.data_ptr(), down_bytes.data_ptr(),
                               reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>()),
                               mask.stride(0), settings);
    });
    return c10::make_intrusive<WeightCache>(std::move(cache), at::kByte, std::string());
  }

  static c10::intrusive_ptr<WeightCache> open_pool_file(
      const std::string& path, const at::Tensor& mask, int64_t queue_depth,
      std::optional<int64_t> grain, std::optional<int64_t> par_threshold,
      std::optional<double> hybrid_tau_frac, bool int8_rows) {
    TORCH_CHECK_VALUE(queue_depth >= 1 && queue_depth <= 1024,
                      "queue_depth must be in [1, 1024], got ", queue_depth);
    auto source = translate_errors(
        [&] {
          return std::make_shared<core::FileRowSource>(path, static_cast<int>(queue_depth),
                                                       core::io_engine_from_environment());
        });
    const std::uint32_t code = source->info().dtype_code;
    if (int8_rows)
      TORCH_CHECK_VALUE(code == core::kPoolFileInt8RowScaled, "pool file ", path, ": dtype code ",
                        code, " is not int8 with per-row scales (5); open it with "
                        "paired_replacement.WeightCache.from_pool_file");
    const at::ScalarType dtype = int8_rows ? at::kByte : dtype_of_pool_file(code, path);
    TORCH_CHECK_VALUE(c10::elementSize(dtype) == source->shape().elem_size, "pool file ", path,
                      ": element size ", source->shape().elem_size, " does not match its dtype");
    check_mask(mask, source->shape().rows, "mask");
    auto cache = translate_errors([&] {
      const core::Settings settings =
          core::Settings::from_environment(core::SettingOverrides{grain, par_threshold, hybrid_tau_frac});
      return core::WeightCache(source, reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>()),
                               mask.stride(0), settings);
    });
    return c10::make_intrusive<WeightCache>(std::move(cache), dtype, path);
  }

  // ("dram", "", false, 0, 0, 0, 0, "") for the in-memory pool; ("file", path, direct I/O, queue
  // depth, bytes read, records read straight into their slots, reads issued -- since
  // construction --, the read engine) for a pool file.
  std::tuple<std::string, std::string, bool, int64_t, int64_t, int64_t, int64_t, std::string>
  tier_info() const {
    UseGuard guard(users_, UseGuard::kRead, "tier_info");
    const auto* file = dynamic_cast<const core::FileRowSource*>(cache_.row_source().get());
    if (file == nullptr) return {"dram", "", false, 0, 0, 0, 0, ""};
    return {"file", file->path(), file->direct_io(), file->queue_depth(),
            static_cast<int64_t>(file->bytes_read()), static_cast<int64_t>(file->scatter_reads()),
            static_cast<int64_t>(file->reads()), file->io_engine()};
  }

  void update_active_weights(const at::Tensor& mask) {
    UseGuard guard(users_, UseGuard::kWrite, "update_active_weights");
    check_mask(mask, cache_.rows(), "mask");
    run_update([&] {
      cache_.update_from_mask(reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>()),
                              mask.stride(0), AtenParallelFor{});
    });
  }

  void update_from_indices(const at::Tensor& added, const at::Tensor& removed) {
    UseGuard guard(users_, UseGuard::kWrite, "update_from_indices");
    check_index_list(added, "added");
    check_index_list(removed, "removed");
    // run_update innermost: translate_errors would otherwise turn a read error into a plain
    // RuntimeError before run_update could add that the cache was reset
    translate_errors([&] {
      run_update([&] {
        cache_.update_from_indices(added.data_ptr<int64_t>(), added.numel(),
                                   removed.data_ptr<int64_t>(), removed.numel(), AtenParallelFor{});
      });
    });
  }

  // Each getter call cuts a fresh view (metadata only, no data moves), so an update creates no
  // tensor and a caller's in-place metadata change (t_(), resize_) cannot leak into the cache.
  // The views are read-only by contract: the cache never reads the packed block back, so a write
  // into a view stays there (check_invariants() reports it).
  // [m, G+U] view of the live packed block (gate columns first); aliases later updates.
  at::Tensor get_concat_weight() const {
    UseGuard guard(users_, UseGuard::kRead, "get_concat_weight");
    return concat_block_.narrow(0, 0, cache_.num_active());
  }
  // [hidden, m] transposed view of the live packed down^T block; aliases later updates.
  at::Tensor get_active_down_weight() const {
    UseGuard guard(users_, UseGuard::kRead, "get_active_down_weight");
    return down_block_.narrow(0, 0, cache_.num_active()).t();
  }
  int64_t get_num_active() const {
    UseGuard guard(users_, UseGuard::kRead, "get_num_active");
    return cache_.num_active();
  }

  at::Tensor active_indices() const {
    UseGuard guard(users_, UseGuard::kRead, "active_indices");
    const int64_t m = cache_.num_active();
    auto out = at::empty({m}, at::kLong);
    auto* o = out.data_ptr<int64_t>();
    const int32_t* rows = cache_.active_rows();
    for (int64_t s = 0; s < m; ++s) o[s] = rows[s];
    return out;
  }

  at::Tensor position_map() const {
    UseGuard guard(users_, UseGuard::kRead, "position_map");
    auto out = at::empty({cache_.rows()}, at::kLong);
    auto* o = out.data_ptr<int64_t>();
    for (int64_t r = 0; r < cache_.rows(); ++r) o[r] = cache_.slot_of(r);
    return out;
  }

  at::Tensor mask() const {
    UseGuard guard(users_, UseGuard::kRead, "mask");
    auto out = at::empty({cache_.rows()}, at::kBool);
    auto* o = out.data_ptr<bool>();
    for (int64_t r = 0; r < cache_.rows(); ++r) o[r] = cache_.is_active(r);
    return out;
  }

  // (added, removed, rows_written, path, m_before, m_after) of the last update.
  std::tuple<int64_t, int64_t, int64_t, std::string, int64_t, int64_t> last_update_stats() const {
    UseGuard guard(users_, UseGuard::kRead, "last_update_stats");
    const auto& s = cache_.last_update_stats();
    return {s.added, s.removed, s.rows_written, core::to_string(s.path), s.m_before, s.m_after};
  }

  // (mask_words_scanned, copy_tasks, slow_bytes_read) of the last update: work counts, see
  // core::UpdateWork.
  std::tuple<int64_t, int64_t, int64_t> last_update_work() const {
    UseGuard guard(users_, UseGuard::kRead, "last_update_work");
    const auto& w = cache_.last_update_work();
    return {w.mask_words_scanned, w.copy_tasks, w.slow_bytes_read};
  }

  // Full pools [N, G+U] and [N, hidden] (down^T): what the cache gathers from. Read-only by contract.
  at::Tensor pool_concat_weight() const { return pool_view(pool_concat_, "pool_concat_weight"); }
  at::Tensor pool_down_weight_t() const { return pool_view(pool_down_, "pool_down_weight_t"); }

  int64_t grain() const { return settings("grain").grain; }
  int64_t par_threshold() const { return settings("par_threshold").par_threshold; }
  double hybrid_tau_frac() const { return settings("hybrid_tau_frac").hybrid_tau_frac; }
  void set_grain(int64_t v) { set("set_grain", [&](core::Settings& s) { s.grain = v; }); }
  void set_par_threshold(int64_t v) {
    set("set_par_threshold", [&](core::Settings& s) { s.par_threshold = v; });
  }
  void set_hybrid_tau_frac(double v) {
    set("set_hybrid_tau_frac", [&](core::Settings& s) { s.hybrid_tau_frac = v; });
  }

  void check_invariants() const {
    UseGuard guard(users_, UseGuard::kRead, "check_invariants");
    try {
      cache_.check_invariants();
    } catch (const std::logic_error& e) {
      TORCH_CHECK(false, e.what(), " (a write into a view returned by get_concat_weight / "
                  "get_active_down_weight / the pool getters leaves exactly this trace)");
    } catch (const std::runtime_error& e) {
      TORCH_CHECK(false, e.what());  // a pool file that cannot be read back
    }
  }

 private:
  void make_views() {
    const int64_t n = cache_.rows();
    concat_block_ = view_of(cache_.packed_concat(), n, cache_.concat_cols(), cache_.concat_ld_bytes(), dtype_);
    down_block_ = view_of(cache_.packed_down(), n, cache_.shape().hidden, cache_.down_ld_bytes(), dtype_);
    if (cache_.pool_concat()) {  // a cache on a pool file has no pool in memory
      pool_concat_ = view_of(cache_.pool_concat(), n, cache_.concat_cols(), cache_.concat_ld_bytes(), dtype_);
      pool_down_ = view_of(cache_.pool_down(), n, cache_.shape().hidden, cache_.down_ld_bytes(), dtype_);
    }
  }

  at::Tensor pool_view(const at::Tensor& pool, const char* method) const {
    TORCH_CHECK(pool.defined(), "WeightCache.", method, ": this cache's pool is the pool file ",
                pool_path_, " (on disk, not in memory); read its rows with "
                "paired_replacement.pool_file.read_pool_file");
    return pool.alias();
  }

  static core::WeightCache make_core(const at::Tensor& mask, int64_t hidden_size,
                                     const at::Tensor& gate, const at::Tensor& up,
                                     const at::Tensor& down, bool has_gate,
                                     const core::SettingOverrides& overrides,
                                     at::ScalarType& dtype) {
    check_strided(up, "up_weight");
    TORCH_CHECK_VALUE(up.dim() == 2, "up_weight must be 2-D [N, hidden_size], got shape ", up.sizes());
    dtype = up.scalar_type();
    TORCH_CHECK_TYPE(is_float_dtype(dtype),
                     "up_weight must be float32, float16 or bfloat16, got ", dtype);
    check_weight(up, "up_weight", dtype);
    const int64_t n = up.size(0);
    TORCH_CHECK_VALUE(n >= 1, "up_weight must have at least one row (N >= 1)");
    TORCH_CHECK_VALUE(hidden_size >= 1, "hidden_size must be >= 1, got ", hidden_size);
    TORCH_CHECK_VALUE(up.size(1) == hidden_size, "up_weight must have shape [N, hidden_size] = [",
                      n, ", ", hidden_size, "], got ", up.sizes());
    check_weight(down, "down_weight", dtype);
    TORCH_CHECK_VALUE(down.size(0) == hidden_size && down.size(1) == n,
                      "down_weight must have shape [hidden_size, N] = [", hidden_size, ", ", n,
                      "], got ", down.sizes());
    // No gate: has_gate=false (the seed's switch; gate_weight is then not looked at), or the
    // seed's placeholder, an empty 1-D floating tensor. Any other empty shape is a mistake.
    bool use_gate = false;
    if (has_gate) {
      check_strided(gate, "gate_weight");
      const bool placeholder = gate.dim() == 1 && gate.size(0) == 0;
      if (placeholder) {
        TORCH_CHECK_TYPE(is_float_dtype(gate.scalar_type()),
                         "gate_weight: an empty gate (no gate) must be a floating tensor like "
                         "torch.empty(0), got dtype ", gate.scalar_type());
      } else {
        TORCH_CHECK_VALUE(gate.dim() == 2, "gate_weight must be 2-D [N, hidden_size], or "
                          "torch.empty(0) for no gate, got shape ", gate.sizes());
        check_weight(gate, "gate_weight", dtype);
        TORCH_CHECK_VALUE(gate.size(0) == n && gate.size(1) == hidden_size,
                          "gate_weight must have shape [N, hidden_size] = [", n, ", ",
                          hidden_size, "] like up_weight (or be torch.empty(0) for no gate), "
                          "got ", gate.sizes());
        use_gate = true;
      }
    }
    check_mask(mask, n, "mask");
    core::Shape shape;
    shape.rows = n;
    shape.gate_cols = use_gate ? gate.size(1) : 0;
    shape.up_cols = up.size(1);
    shape.hidden = hidden_size;
    shape.elem_size = c10::elementSize(dtype);
    return translate_errors([&] {
      const core::Settings settings = core::Settings::from_environment(overrides);
      return core::WeightCache(shape, use_gate ? gate.data_ptr() : nullptr, up.data_ptr(),
                               down.data_ptr(),
                               reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>()),
                               mask.stride(0), settings);
    });
  }

  core::Settings settings(const char* method) const {
    UseGuard guard(users_, UseGuard::kRead, method);
    return cache_.settings();
  }

  template <class F>
  void set(const char* method, F&& change) {
    UseGuard guard(users_, UseGuard::kWrite, method);
    core::Settings s = cache_.settings();
    change(s);
    translate_errors([&] { cache_.set_settings(s); });
  }

  at::ScalarType dtype_ = at::kFloat;  // set by make_core before cache_ is built
  core::WeightCache cache_;
  std::string pool_path_;  // the pool file, or empty: the pool is in memory
  at::Tensor concat_block_, down_block_, pool_concat_, pool_down_;  // full-capacity views
  mutable std::atomic<int64_t> users_{0};  // see UseGuard
};

// Copies src[src_rows[i]] -> dst[dst_rows[i]], one row at a time: the physical floor of an O(k)
// update, used by the benchmarks as a lower bound. `streaming` uses the core's non-temporal row
// copy (x86, 64-byte aligned rows) instead of memcpy; `parallel` splits the rows over ATen's pool.
void copy_rows(at::Tensor dst, const at::Tensor& dst_rows, const at::Tensor& src,
               const at::Tensor& src_rows, bool streaming, bool parallel) {
  check_index_list(dst_rows, "dst_rows");
  check_index_list(src_rows, "src_rows");
  check_strided(dst, "dst");
  check_strided(src, "src");
  check_cpu(dst, "dst");
  check_cpu(src, "src");
  TORCH_CHECK_VALUE(dst.dim() == 2, "dst must be 2-D, got ", dst.dim(), "-D");
  TORCH_CHECK_VALUE(src.dim() == 2, "src must be 2-D, got ", src.dim(), "-D");
  TORCH_CHECK_VALUE(dst.size(1) == src.size(1), "dst and src must have the same number of columns "
                    "(dst ", dst.sizes(), ", src ", src.sizes(), ")");
  TORCH_CHECK_TYPE(dst.scalar_type() == src.scalar_type(), "dst and src must share a dtype (dst ",
                   dst.scalar_type(), ", src ", src.scalar_type(), ")");
  TORCH_CHECK_VALUE(dst.stride(1) == 1, "dst rows must be contiguous (column stride ", dst.stride(1), ")");
  TORCH_CHECK_VALUE(src.stride(1) == 1, "src rows must be contiguous (column stride ", src.stride(1), ")");
  TORCH_CHECK_VALUE(dst_rows.numel() == src_rows.numel(), "dst_rows and src_rows differ in length (",
                    dst_rows.numel(), " and ", src_rows.numel(), ")");
  const auto* di = dst_rows.data_ptr<int64_t>();
  const auto* si = src_rows.data_ptr<int64_t>();
  for (int64_t i = 0; i < dst_rows.numel(); ++i) {
    TORCH_CHECK_INDEX(di[i] >= 0 && di[i] < dst.size(0), "dst_rows[", i, "] = ", di[i],
                      " out of range [0, ", dst.size(0), ")");
    TORCH_CHECK_INDEX(si[i] >= 0 && si[i] < src.size(0), "src_rows[", i, "] = ", si[i],
                      " out of range [0, ", src.size(0), ")");
  }
  const size_t es = dst.element_size();
  const size_t row_bytes = static_cast<size_t>(dst.size(1)) * es;
  auto* d = static_cast<std::byte*>(dst.data_ptr());
  const auto* s = static_cast<const std::byte*>(src.data_ptr());
  const size_t dld = dst.stride(0) * es, sld = src.stride(0) * es;
  const auto body = [=](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      core::detail::copy_row(d + di[i] * dld, s + si[i] * sld, row_bytes, streaming);
    if (streaming) core::detail::store_fence();
  };
  if (parallel)
    at::parallel_for(0, dst_rows.numel(), 1, body);
  else
    body(0, dst_rows.numel());
}

// Element -> float for the row FFN, so that the core stays torch-free. By the bits, with the
// core's branch-free conversions: c10::Half's own conversion is one scalar F16C instruction per
// element, which keeps the row conversion loop from vectorizing (about 3x slower at H = 4096).
struct RowFfnToFloat {
  float operator()(float v) const noexcept { return v; }
  float operator()(c10::Half v) const noexcept { return core::half_bits_to_float(v.x); }
  float operator()(c10::BFloat16 v) const noexcept { return core::bfloat16_bits_to_float(v.x); }
};

// A 2-D matrix of rows for row_ffn: dtype like x, on the CPU, `cols` columns, unit column stride
// (any row stride: padded rows are read in place).
void check_row_matrix(const at::Tensor& t, const char* name, int64_t cols, at::ScalarType dtype,
                      const char* layout) {
  check_strided(t, name);
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, " must have dtype ", dtype, " like x, got ",
                   t.scalar_type());
  check_cpu(t, name);
  TORCH_CHECK_VALUE(t.dim() == 2, name, " must be 2-D [R, ", layout, "], got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.size(1) == cols, name, " must have ", cols, " columns (", layout,
                    "), got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.stride(1) == 1 || t.size(1) <= 1, name,
                    " must have contiguous rows (stride(1) == 1), got strides ", t.strides());
}

// The FFN of x [b, H] over the selected rows, read in place (see row_ffn.hpp): concat_rows
// [R, 2H] (gate | up) or [R, H] (up, has_gate=false), down_rows [R, H] (rows of down^T), rows an
// int64 list of ids in [0, R) (duplicates count twice) or None for all R rows. Computed in
// float32 on ATen's intra-op threads; returns [b, H] in x's dtype.
at::Tensor row_ffn(const at::Tensor& x, const at::Tensor& concat_rows, const at::Tensor& down_rows,
                   const std::optional<at::Tensor>& rows, bool has_gate) {
  check_strided(x, "x");
  const at::ScalarType dtype = x.scalar_type();
  TORCH_CHECK_TYPE(is_float_dtype(dtype), "x must be float32, float16 or bfloat16, got ", dtype);
  check_cpu(x, "x");
  TORCH_CHECK_VALUE(x.dim() == 2, "x must be 2-D [batch, hidden], got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.is_contiguous(), "x must be contiguous (call .contiguous())");
  const int64_t batch = x.size(0), hidden = x.size(1);
  const int64_t cols = has_gate ? 2 * hidden : hidden;
  check_row_matrix(concat_rows, "concat_rows", cols, dtype,
                   has_gate ? "2 * hidden: gate | up" : "hidden: up, has_gate=False");
  const int64_t num_rows = concat_rows.size(0);
  check_row_matrix(down_rows, "down_rows", hidden, dtype, "hidden: rows of down^T");
  TORCH_CHECK_VALUE(down_rows.size(0) == num_rows, "down_rows must have R = ", num_rows,
                    " rows like concat_rows, got shape ", down_rows.sizes());
  const int64_t* ids = nullptr;
  int64_t count = num_rows;
  if (rows.has_value() && rows->defined()) {
    check_index_list(*rows, "rows");
    ids = rows->data_ptr<int64_t>();
    count = rows->numel();
    for (int64_t i = 0; i < count; ++i)
      TORCH_CHECK_INDEX(ids[i] >= 0 && ids[i] < num_rows, "rows[", i, "] = ", ids[i],
                        " is out of range [0, ", num_rows, ")");
  }
  const int64_t row_bytes = (cols + hidden) * static_cast<int64_t>(x.element_size());
  const int64_t tasks = core::row_ffn_tasks(
      count, row_bytes, at::in_parallel_region() ? 1 : static_cast<int64_t>(at::get_num_threads()));
  at::Tensor y = at::empty({batch, hidden}, x.options().dtype(at::kFloat));
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    const auto scratch_floats = translate_errors(
        [&] { return core::row_ffn_scratch_floats<T>(batch, hidden, has_gate, tasks); });
    at::Tensor scratch = at::empty({static_cast<int64_t>(scratch_floats)}, y.options());
    translate_errors([&] {
      core::row_ffn(x.data_ptr<T>(), batch, hidden, concat_rows.data_ptr<T>(),
                    concat_rows.stride(0), down_rows.data_ptr<T>(), down_rows.stride(0), num_rows,
                    ids, count, has_gate, y.data_ptr<float>(), scratch.data_ptr<float>(), tasks,
                    RowFfnToFloat{}, AtenParallelFor{});
    });
  };
  switch (dtype) {
    case at::kFloat: run(float{}); return y;
    case at::kHalf: run(c10::Half{}); break;
    default: run(c10::BFloat16{}); break;
  }
  return y.to(dtype);
}

#define PAIRED_REPLACEMENT_STR2(...) #__VA_ARGS__
#define PAIRED_REPLACEMENT_STR(...) PAIRED_REPLACEMENT_STR2(__VA_ARGS__)

// How at::parallel_for runs inside this library. ATen's OpenMP backend inlines the parallel
// region into the caller, so a library compiled without -fopenmp silently runs every copy on the
// calling thread while torch itself uses all its threads.
std::string parallel_backend() {
#if AT_PARALLEL_OPENMP && defined(_OPENMP)
  return "openmp";
#elif AT_PARALLEL_OPENMP
  return "serial (torch uses OpenMP but this library was compiled without -fopenmp)";
#elif AT_PARALLEL_NATIVE
  return "native";
#else
  return "unknown";
#endif
}

// What this library was compiled with, as "key=value" lines (flags comma-separated): results
// record it.
std::string build_info() {
  std::string simd =
#if defined(__AVX512F__)
      "avx512f";
#elif defined(__AVX2__)
      "avx2";
#elif defined(PAIRED_REPLACEMENT_X86)
      "sse2";
#else
      "portable";
#endif
  return std::string("compiler=") +
#if defined(__clang__)
         "clang " __clang_version__
#elif defined(__GNUC__)
         "gcc " __VERSION__
#else
         "unknown"
#endif
         + "\nflags=" +
#ifdef PAIRED_REPLACEMENT_BUILD_FLAGS
         PAIRED_REPLACEMENT_STR(PAIRED_REPLACEMENT_BUILD_FLAGS)
#else
         "unrecorded"
#endif
         + "\nsimd=" + simd + "\nparallel=" + parallel_backend() +
         "\nstreaming_min_bytes=" + std::to_string(core::kStreamingMinBytes) +
         "\npool_file_max_read_bytes=" + std::to_string(core::kPoolFileMaxReadBytes) + "\n";
}

}  // namespace

TORCH_LIBRARY(paired, m) {
  m.class_<WeightCache>("WeightCache")
      .def(torch::init<const at::Tensor&, int64_t, const at::Tensor&, const at::Tensor&,
                       const at::Tensor&, bool, std::optional<int64_t>, std::optional<int64_t>,
                       std::optional<double>>(),
           "WeightCache(mask, hidden_size, gate_weight, up_weight, down_weight, has_gate=True, "
           "grain=None, par_threshold=None, hybrid_tau_frac=None)",
           {torch::arg("mask"), torch::arg("hidden_size"), torch::arg("gate_weight"),
            torch::arg("up_weight"), torch::arg("down_weight"), torch::arg("has_gate") = true,
            torch::arg("grain") = torch::arg::none(),
            torch::arg("par_threshold") = torch::arg::none(),
            torch::arg("hybrid_tau_frac") = torch::arg::none()})
      .def("update_active_weights", &WeightCache::update_active_weights)
      .def("update_from_indices", &WeightCache::update_from_indices)
      .def("get_concat_weight", &WeightCache::get_concat_weight)
      .def("get_active_down_weight", &WeightCache::get_active_down_weight)
      .def("get_num_active", &WeightCache::get_num_active)
      .def("active_indices", &WeightCache::active_indices)
      .def("position_map", &WeightCache::position_map)
      .def("mask", &WeightCache::mask)
      .def("last_update_stats", &WeightCache::last_update_stats)
      .def("last_update_work", &WeightCache::last_update_work)
      .def("pool_concat_weight", &WeightCache::pool_concat_weight)
      .def("pool_down_weight_t", &WeightCache::pool_down_weight_t)
      .def("grain", &WeightCache::grain)
      .def("par_threshold", &WeightCache::par_threshold)
      .def("hybrid_tau_frac", &WeightCache::hybrid_tau_frac)
      .def("set_grain", &WeightCache::set_grain)
      .def("set_par_threshold", &WeightCache::set_par_threshold)
      .def("set_hybrid_tau_frac", &WeightCache::set_hybrid_tau_frac)
      .def("check_invariants", &WeightCache::check_invariants)
      .def("tier_info", &WeightCache::tier_info)
      .def_static("from_pool_file", &WeightCache::from_pool_file)
      .def_static("from_int8_pool_file", &WeightCache::from_int8_pool_file)
      .def_static("from_byte_rows", &WeightCache::from_byte_rows);
  m.def("copy_rows(Tensor(a!) dst, Tensor dst_rows, Tensor src, Tensor src_rows, "
        "bool streaming=False, bool parallel=False) -> ()");
  m.impl("copy_rows", c10::DispatchKey::CPU, TORCH_FN(copy_rows));
  m.def("row_ffn(Tensor x, Tensor concat_rows, Tensor down_rows, Tensor? rows, bool has_gate) "
        "-> Tensor");
  m.impl("row_ffn", c10::DispatchKey::CPU, TORCH_FN(row_ffn));
  m.def("build_info() -> str", &build_info);
}

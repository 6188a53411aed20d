"""Real decode: greedy token-by-token generation with the KV cache, every FFN behind a weight cache.

Every decoder layer's MLP is replaced by a :class:`CachedFFN` that owns one weight cache of that
layer and computes, per token:

1. **mask** — the gate-threshold policy (CATS style, see :mod:`.policies`): ``g = x W_gate^T``
   densely, ``mask = |silu(g)| > t_layer`` with ``t_layer`` calibrated on the calibration split
   for the target density; with a window W > 1 the union of the last W tokens' masks;
2. **update** — bring the layer's packed rows to the mask (what the methods differ in);
3. **FFN** — ``y = (silu(x W_g^T) * (x W_u^T)) W_d^T`` over the active rows only.

The gate projection is dense by construction of the policy (the mask is read off it), so for
the packing methods the cache holds only up rows and down columns (``WeightCache(..., gate=None)``)
and the FFN reuses the dense gate's activations of its rows: ``h = silu(g)[rows] * (x W_up^T)``.
The methods that read gate|up rows in place with ``torch.ops.paired.row_ffn`` (``FUSED_METHODS``:
``no_pack``, ``paired_window_subset``) keep gate|up rows in their pool instead, compute the mask's
gate from the pool's gate columns (a strided view, no copy) and let row_ffn recompute the gate of
its m rows (d/3 of a dense FFN's multiply-adds more).

Methods (``METHODS``):

- ``dense``        the unmodified model (its own MLP modules): the reference;
- ``gather``       index_select of every active row (gate|up and down^T) from the pools into
                   preallocated buffers each token, then the FFN: a full re-pack per token;
- ``torch_delta``  the same differential update as the cache in plain torch
                   (bench.baselines.TorchDeltaCache), then the FFN: the strongest baseline;
- ``paired``       WeightCache.update_active_weights (hybrid rebuild off), then the FFN;
- ``no_pack``      no packed block: ``torch.ops.paired.row_ffn`` reads the active rows where they
                   lie in the pools (nothing to update, scattered reads every token);
- ``paired_window`` the paired cache holding the union of the last W masks; the FFN computes on
                   the **whole union** (what the packed block gives for free; the quality stage's
                   window rows measure this choice);
- ``paired_window_subset`` the same cache, the FFN on the **current token's rows only** (the
                   slots of the current mask, read in place by row_ffn): the quality of W = 1 with
                   the union's update cost; against ``paired_window`` it prices the choice.

File tier (``FILE_METHODS``; ``decode --tier file``): each layer's up rows and down columns live
in a pool file (one record per neuron, :mod:`paired_replacement.pool_file`) and only the packed
rows are in memory, the setting of LLM in a flash (the gate stays in memory: the mask is read off
it). The update reads the records it writes with direct I/O:

- ``file_reload``         every active record re-read each token (tau = 0: a full re-pack from the
                          file; the no-packing FFN, which must read every active row every token,
                          reads the same bytes)
- ``file_paired``         the paired update: only the records of the rows that changed
- ``file_window_reload``  the window union re-read each token (the full reload at the window policy)
- ``file_window``         the paired update of the window union (LLM in a flash's windowing)

At density 1 every sparse method computes the dense FFN (every neuron active): its logits must
equal the dense model's up to float rounding (:func:`max_logit_difference`, tested).

Memory (:func:`build_layers` with ``release``): a sparse model drops the MLP modules' own copies
of what its caches hold once each layer's cache is built (and trims the heap), so the weights live
once, in the pools; the packed block's pages are committed as slots are first used (the core's
kLazyCommitMinBytes), so it costs about the largest m seen, not N.
"""

from __future__ import annotations

import gc
import inspect
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from .. import WeightCache
from ..bench.baselines import TorchDeltaCache

DRAM_METHODS = ("dense", "gather", "torch_delta", "paired", "no_pack", "paired_window",
                "paired_window_subset")
FILE_METHODS = ("file_reload", "file_paired", "file_window_reload", "file_window")
METHODS = DRAM_METHODS + FILE_METHODS
WINDOW_METHODS = ("paired_window", "paired_window_subset", "file_window_reload", "file_window")
#: methods whose update is the cache's (WeightCache.update_active_weights) and FFN the packed one
CACHE_UPDATE_METHODS = ("paired", "paired_window", *FILE_METHODS)
#: file-tier methods that rebuild every token (tau = 0: every active record re-read)
RELOAD_METHODS = ("file_reload", "file_window_reload")
#: methods whose FFN is row_ffn over gate|up rows read in place (they cache the gate rows too)
FUSED_METHODS = ("no_pack", "paired_window_subset")
NEVER_REBUILD_TAU = 2.0  # tau >= 1: the paired path always (the hybrid rule is studied in micro)
PHASES = ("mask", "update", "ffn")
FILE_QUEUE_DEPTH = 16  # reads in flight per layer's pool file (its reader threads)


@dataclass
class PhaseClock:
    """Seconds per phase since the last :meth:`take` (the CachedFFN modules add to it)."""

    seconds: dict = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    rows_written: int = 0
    active_rows: int = 0
    calls: int = 0
    bytes_read: int = 0  # from the slow tier (file methods)

    def take(self) -> tuple[dict, int, int, int]:
        out = (dict(self.seconds), self.rows_written, self.active_rows, self.calls)
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.rows_written = self.active_rows = self.calls = 0
        return out

    def take_bytes(self) -> int:
        out, self.bytes_read = self.bytes_read, 0
        return out


def _ffn_up(x: torch.Tensor, act: torch.Tensor, order: torch.Tensor, w_up: torch.Tensor,
            d: torch.Tensor) -> torch.Tensor:
    """SwiGLU over packed up rows with the dense gate's activations: w_up [m, H(+pad)] up rows,
    d [H, m] down columns, order [m] the neuron of each row, act [N] = silu(x W_gate^T)."""
    return torch.mm(torch.mm(x, w_up.t()).mul_(act.index_select(0, order)), d.t())


class CachedFFN(torch.nn.Module):
    """One layer's FFN behind a weight cache (see the module doc); ``forward`` takes the MLP's
    input ``[batch, T, H]`` and runs token by token (a decode step has T = 1)."""

    def __init__(self, mlp, method: str, threshold: float, window: int, clock: PhaseClock,
                 pool_path=None, queue_depth: int = FILE_QUEUE_DEPTH) -> None:
        super().__init__()
        if method not in METHODS or method == "dense":
            raise ValueError(f"CachedFFN: method must be one of {METHODS[1:]}, got {method!r}")
        if window < 1:
            raise ValueError(f"CachedFFN: window must be >= 1, got {window}")
        if (method in FILE_METHODS) != (pool_path is not None):
            raise ValueError(f"CachedFFN: method {method!r} "
                             + ("needs a pool file (pool_path)" if method in FILE_METHODS
                                else "keeps its pool in memory: no pool_path"))
        gate = mlp.gate_proj.weight.detach()
        n, h = gate.shape
        self.method, self.threshold, self.hidden, self.num_neurons = method, float(threshold), h, n
        self.window = window if method in WINDOW_METHODS else 1
        self.clock = clock
        # Fused methods read gate|up rows in place with row_ffn (which computes the gate of its
        # rows itself); the others keep the model's gate for the mask and cache up/down only.
        self.fused = method in FUSED_METHODS
        empty = torch.zeros(n, dtype=torch.bool)
        self.delta = None
        self.recent: deque = deque(maxlen=self.window)
        if method in FILE_METHODS:  # up/down in the file; only the packed rows in memory
            tau = 0.0 if method in RELOAD_METHODS else NEVER_REBUILD_TAU
            # (a pool file of another N refuses the layer's mask, naming both sizes)
            self.cache = WeightCache.from_pool_file(pool_path, empty, hybrid_tau_frac=tau,
                                                    queue_depth=queue_depth)
            self.gate_w = gate
            return
        up, down = mlp.up_proj.weight.detach(), mlp.down_proj.weight.detach()
        self.cache = WeightCache(empty, h, gate if self.fused else None, up, down,
                                 hybrid_tau_frac=NEVER_REBUILD_TAU)
        self.pool_c = self.cache.pool_concat_weight()   # [N, (2)H(+pad)] views of the pools
        self.pool_d = self.cache.pool_down_weight_t()   # [N, H(+pad)]
        self.gate_w = self.pool_c[:, :h] if self.fused else gate
        self.delta = TorchDeltaCache(self.pool_c, self.pool_d, empty) if method == "torch_delta" else None
        if method == "gather":
            self.buf_c = torch.empty_like(self.pool_c)
            self.buf_d = torch.empty_like(self.pool_d)

    def reset(self) -> None:
        """Back to no active row and an empty window (a new sequence)."""
        empty = torch.zeros(self.num_neurons, dtype=torch.bool)
        if self.method in (*CACHE_UPDATE_METHODS, *WINDOW_METHODS):
            self.cache.update_active_weights(empty)
        if self.delta is not None:
            self.delta.update_from_mask(empty)
        self.recent.clear()

    def mask_of(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mask the cache must hold, the token's own mask, silu(x W_gate^T) [N]) for x [1, H]:
        the mask is the window union when W > 1."""
        act = F.silu(torch.mm(x, self.gate_w.t()))[0]
        current = act.abs() > self.threshold
        if self.window == 1:
            return current, current, act
        self.recent.append(current)
        union = current.clone()
        for past in list(self.recent)[:-1]:
            union |= past
        return union, current, act

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        clock, method = self.clock, self.method
        t0 = time.perf_counter()
        mask, current, act = self.mask_of(x)
        t1 = time.perf_counter()
        if method in (*CACHE_UPDATE_METHODS, *WINDOW_METHODS):
            self.cache.update_active_weights(mask)
            written, active = self.cache.last_update_stats().rows_written, self.cache.num_active
            if method in FILE_METHODS:
                clock.bytes_read += self.cache.last_update_work().slow_bytes_read
        elif method == "torch_delta":
            self.delta.update_from_mask(mask)
            written, active = self.delta.rows_written, self.delta.m
        else:  # gather writes every active row; no_pack writes nothing
            idx = mask.nonzero().squeeze(1)
            active = idx.numel()
            written = active if method == "gather" else 0
            if method == "gather":
                torch.index_select(self.pool_c, 0, idx, out=self.buf_c[:active])
                torch.index_select(self.pool_d, 0, idx, out=self.buf_d[:active])
        t2 = time.perf_counter()
        if method in CACHE_UPDATE_METHODS:
            cache = self.cache
            y = _ffn_up(x, act, cache.active_indices(), cache.get_concat_weight(),
                        cache.get_active_down_weight())
        elif method == "paired_window_subset":
            slots = current[self.cache.active_indices()].nonzero().squeeze(1)
            active = slots.numel()
            y = torch.ops.paired.row_ffn(x, self.cache.get_concat_weight(),
                                         self.cache.get_active_down_weight().t(), slots, True)
        elif method == "torch_delta":
            d = self.delta
            y = _ffn_up(x, act, d.row_at[: d.m], d.concat_weight(), d.down_weight())
        elif method == "gather":
            y = _ffn_up(x, act, idx, self.buf_c[:active], self.buf_d[:active].t())
        else:
            y = torch.ops.paired.row_ffn(x, self.pool_c, self.pool_d, idx, True)
        t3 = time.perf_counter()
        s = clock.seconds
        s["mask"] += t1 - t0
        s["update"] += t2 - t1
        s["ffn"] += t3 - t2
        clock.rows_written += written
        clock.active_rows += active
        clock.calls += 1
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if flat.dtype != torch.float32:
            raise TypeError(f"CachedFFN: float32 activations expected, got {flat.dtype}")
        out = torch.cat([self._step(flat[i : i + 1]) for i in range(flat.shape[0])])
        return out.reshape(shape)


class TimedMLP(torch.nn.Module):
    """The dense model's own MLP, timed as the FFN phase (no mask, no update)."""

    def __init__(self, mlp, clock: PhaseClock) -> None:
        super().__init__()
        self.mlp, self.clock = mlp, clock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        y = self.mlp(x)
        self.clock.seconds["ffn"] += time.perf_counter() - t0
        self.clock.calls += 1
        return y


def build_layers(layers: Sequence, method: str, thresholds: Sequence[float], window: int,
                 clock: PhaseClock, *, release: bool = False,
                 pool_paths: Sequence | None = None,
                 queue_depth: int = FILE_QUEUE_DEPTH) -> list[torch.nn.Module]:
    """One module per decoder layer for ``method``. With ``release`` each layer's original MLP
    weights are dropped as soon as its cache holds them (the sparse model keeps one copy; a file
    method keeps none: they are in the pool files). ``pool_paths``: one pool file per layer
    (:func:`write_pool_files`), for the file methods."""
    if method not in METHODS:
        raise ValueError(f"unknown decode method {method!r}; choose from {', '.join(METHODS)}")
    if method != "dense" and len(thresholds) != len(layers):
        raise ValueError(f"{len(thresholds)} thresholds for {len(layers)} layers")
    if method in FILE_METHODS and (pool_paths is None or len(pool_paths) != len(layers)):
        raise ValueError(f"decode method {method} needs one pool file per layer "
                         f"({len(layers)}), got {0 if pool_paths is None else len(pool_paths)}")
    modules = []
    for i, layer in enumerate(layers):
        if method == "dense":
            modules.append(TimedMLP(layer.mlp, clock))
            continue
        modules.append(CachedFFN(layer.mlp, method, thresholds[i], window, clock,
                                 pool_paths[i] if method in FILE_METHODS else None, queue_depth))
        if release:
            # the cache's pools hold up and down (and, for the fused methods, the gate); the
            # others compute the mask with the model's own gate weight, which stays
            released = [layer.mlp.up_proj, layer.mlp.down_proj]
            released += [layer.mlp.gate_proj] if method in FUSED_METHODS else []
            for proj in released:
                proj.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)
            layer.mlp = modules[-1]
    if release:
        gc.collect()
        _trim_heap()
    return modules


def write_pool_files(layers: Sequence, directory) -> list:
    """One pool file per layer in ``directory`` (``layer<i>.pool``): the layer's up rows and down
    columns (the gate stays in memory: the mask is read off it). Rewritten only when missing;
    their pages are dropped from the page cache (the file methods read with direct I/O)."""
    from pathlib import Path

    from ..pool_file import drop_cached_pages, write_pool_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, layer in enumerate(layers):
        path = directory / f"layer{i:03d}.pool"
        if not path.exists():
            write_pool_file(path, None, layer.mlp.up_proj.weight.detach(),
                            layer.mlp.down_proj.weight.detach())
            drop_cached_pages(path)
        paths.append(path)
    return paths


def _trim_heap() -> None:
    """Give freed heap memory back to the kernel (glibc ``malloc_trim``): freed weights are
    otherwise kept by the allocator and still count as resident."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass  # not glibc: nothing to trim


def install(layers: Sequence, modules: Sequence[torch.nn.Module]) -> None:
    """Make ``modules[i]`` layer i's MLP (and reset their state: a new sequence)."""
    for layer, module in zip(layers, modules, strict=True):
        layer.mlp = module
        if isinstance(module, CachedFFN):
            module.reset()


@dataclass
class DecodeRun:
    """One greedy decode: per-step seconds and phase seconds, the tokens generated."""

    step_s: list
    phase_s: list  # [{mask, update, ffn}] per step
    rows_written: list  # per step, summed over layers
    active_rows: list  # per step, summed over layers
    tokens: list
    logits: torch.Tensor | None = None
    bytes_read: list = field(default_factory=list)  # per step from the slow tier, all layers


def greedy_decode(model, prompt_ids: Sequence[int], new_tokens: int, clock: PhaseClock, *,
                  forced: Sequence[int] | None = None, keep_logits: bool = False) -> DecodeRun:
    """Feed the prompt token by token (untimed), then ``new_tokens`` greedy steps with the KV
    cache, each timed whole (forward + argmax). ``forced``: feed these tokens instead of the
    argmax (teacher forcing, to compare two models' logits on the same inputs)."""
    from transformers import DynamicCache

    if len(prompt_ids) < 1 or new_tokens < 1:
        raise ValueError("greedy_decode needs at least one prompt token and one new token")
    past = DynamicCache()  # filled in place by every forward
    # transformers renamed past_key_values to cache (5.2x warns about the old name)
    kv = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.inference_mode():
        for tok in prompt_ids[:-1]:
            model(input_ids=torch.tensor([[tok]]), use_cache=True, **{kv: past})
        clock.take()
        clock.take_bytes()
        token = prompt_ids[-1]
        run = DecodeRun([], [], [], [], [])
        kept = []
        for step in range(new_tokens):
            t0 = time.perf_counter()
            out = model(input_ids=torch.tensor([[token]]), use_cache=True, **{kv: past})
            logits = out.logits[0, -1]
            nxt = int(logits.argmax())
            t1 = time.perf_counter()
            phases, written, active, _ = clock.take()
            run.step_s.append(t1 - t0)
            run.phase_s.append(phases)
            run.rows_written.append(written)
            run.active_rows.append(active)
            run.bytes_read.append(clock.take_bytes())
            run.tokens.append(nxt)
            if keep_logits:
                kept.append(logits.clone())
            token = nxt if forced is None else forced[step]
        if keep_logits:
            run.logits = torch.stack(kept)
    return run


def max_logit_difference(model, layers: Sequence, method: str, prompt_ids: Sequence[int],
                         new_tokens: int, pool_paths: Sequence | None = None,
                         queue_depth: int = FILE_QUEUE_DEPTH) -> tuple[float, float]:
    """(max |logits - dense logits|, max |dense logits|) over ``new_tokens`` teacher-forced steps
    with ``method`` at density 1 (every neuron active): the sparse path must be the dense model."""
    clock = PhaseClock()
    originals = [layer.mlp for layer in layers]
    try:
        install(layers, build_layers(layers, "dense", [], 1, clock))
        dense = greedy_decode(model, prompt_ids, new_tokens, clock, keep_logits=True)
        install(layers, originals)
        sparse_modules = build_layers(layers, method, [float("-inf")] * len(layers), 1, clock,
                                      pool_paths=pool_paths, queue_depth=queue_depth)
        install(layers, sparse_modules)
        sparse = greedy_decode(model, prompt_ids, new_tokens, clock, forced=dense.tokens,
                               keep_logits=True)
    finally:
        for layer, mlp in zip(layers, originals):
            layer.mlp = mlp
    return (float((sparse.logits - dense.logits).abs().max()), float(dense.logits.abs().max()))


def vm_kib(field_name: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM); -1 where unavailable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: ``5`` into /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Measurement: every method interleaved, round by round, in one process
# ---------------------------------------------------------------------------------------------
ROLES = {"dense": "baseline", "gather": "baseline", "torch_delta": "baseline",
         "paired": "headline", "no_pack": "baseline", "paired_window": "headline",
         "paired_window_subset": "policy", "file_reload": "baseline", "file_paired": "headline",
         "file_window_reload": "baseline", "file_window": "headline"}
SPEEDUP_BASELINES = ("dense", "torch_delta", "file_reload", "file_window_reload")


def tier_of(method: str) -> str:
    return "file" if method in FILE_METHODS else "dram"


def measure(model, layers: Sequence, thresholds: Sequence[float], methods: Sequence[str],
            window: int, prompt_ids: Sequence[int], new_tokens: int, rounds: int, *,
            seed: int = 0, on_run=None, pool_paths: Sequence | None = None,
            queue_depth: int = FILE_QUEUE_DEPTH) -> dict[str, list[DecodeRun]]:
    """``rounds`` timed decodes per method (plus one untimed warm-up round); in each round the
    methods take turns in a random order, so a slow spell of the machine hits all of them. The
    model's own MLPs are put back on return."""
    import random

    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    originals = [layer.mlp for layer in layers]
    clock = PhaseClock()
    try:
        modules = {m: build_layers(layers, m, thresholds, window, clock, pool_paths=pool_paths,
                                   queue_depth=queue_depth) for m in methods}
        rng = random.Random(seed)
        runs: dict[str, list[DecodeRun]] = {m: [] for m in methods}
        for r in range(rounds + 1):
            order = list(methods)
            rng.shuffle(order)
            for method in order:
                install(layers, modules[method])
                run = greedy_decode(model, prompt_ids, new_tokens, clock)
                if r > 0:
                    runs[method].append(run)
                if on_run is not None:
                    on_run(r, method, run)
    finally:
        for layer, mlp in zip(layers, originals):
            layer.mlp = mlp
    return runs


def summarize(runs: dict[str, list[DecodeRun]], *, num_layers: int, num_neurons: int,
              seed: int = 0) -> list[dict]:
    """One dict per method: step-time statistics (blocks = rounds), tokens/s with its interval,
    speedups over dense and torch_delta (round-by-round, token-by-token paired ratios), the
    split of a step into mask / update / FFN / rest, and the rows the FFN and the update touch."""
    import numpy as np

    from ..bench import stats

    values = {m: [r.step_s for r in rs] for m, rs in runs.items()}
    rows = []
    for method, rs in runs.items():
        s = stats.summary(values[method], seed=seed)
        total = sum(sum(r.step_s) for r in rs)
        phase = {p: sum(ph[p] for r in rs for ph in r.phase_s) for p in PHASES}
        steps = sum(len(r.step_s) for r in rs)
        active = np.mean([a for r in rs for a in r.active_rows]) / num_layers
        written = np.mean([w for r in rs for w in r.rows_written]) / num_layers
        row = {
            "method": method, "role": ROLES[method], **s,
            "tokens_per_s": 1.0 / s["median_s"],
            "tokens_per_s_ci95_low": 1.0 / s["ci95_high_s"],
            "tokens_per_s_ci95_high": 1.0 / s["ci95_low_s"],
            **{f"{p}_s": phase[p] / steps for p in PHASES},
            "other_s": (total - sum(phase.values())) / steps,
            **{f"{p}_share": phase[p] / total for p in PHASES},
            "other_share": (total - sum(phase.values())) / total,
            "active_fraction": float(active) / num_neurons if method != "dense" else 1.0,
            "rows_written_per_layer": float(written) if method != "dense" else 0.0,
            "tier": tier_of(method),
            "slow_bytes_read_per_token": float(np.mean([b for r in rs for b in r.bytes_read]))
            if any(r.bytes_read for r in rs) else 0.0,
            "tokens_generated_sha256": _tokens_digest(rs[0].tokens) if rs else "",
        }
        for base in SPEEDUP_BASELINES:
            ratio = stats.ratio_interval(values[base], values[method], seed=seed) \
                if base in values else None
            row.update(stats.ratio_columns(f"speedup_vs_{base}", ratio))
        rows.append(row)
    return rows


def _tokens_digest(tokens: Sequence[int]) -> str:
    import hashlib

    return hashlib.sha256(",".join(map(str, tokens)).encode()).hexdigest()[:12]


def probe_rss(model, layers: Sequence, method: str, thresholds: Sequence[float], window: int,
              prompt_ids: Sequence[int], new_tokens: int, pool_paths: Sequence | None = None,
              queue_depth: int = FILE_QUEUE_DEPTH) -> dict:
    """Peak resident memory of decoding with ``method`` in this process, from the state the
    caller left (model loaded): VmHWM is reset, the method's modules are built (sparse methods
    release the MLPs' own weights), ``new_tokens`` are decoded, and the new VmHWM is read.
    (A file method's weights leave memory for its pool files: its peak is the loaded model's,
    its resident memory at the end, ``rss_end_kib``, is what it keeps.)"""
    gc.collect()
    reset = reset_peak_rss()
    before = vm_kib("VmRSS")
    clock = PhaseClock()
    modules = build_layers(layers, method, thresholds, window, clock, release=method != "dense",
                           pool_paths=pool_paths, queue_depth=queue_depth)
    install(layers, modules)
    built = vm_kib("VmRSS")
    greedy_decode(model, prompt_ids, new_tokens, clock)
    import resource

    return {"method": method, "peak_reset": reset, "rss_before_kib": before,
            "rss_built_kib": built, "rss_end_kib": vm_kib("VmRSS"),
            "peak_kib": vm_kib("VmHWM") if reset else -1,
            "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}

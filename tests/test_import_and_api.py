"""The seed's usage after one import, torch-free tools staying torch-free, and object contracts."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from paired_replacement import UpdateWork, WeightCache

SEED_USAGE = textwrap.dedent(
    """
    {imports}
    n, hidden = 70, 9
    gate, up, down = torch.randn(n, hidden), torch.randn(n, hidden), torch.randn(hidden, n)
    mask = torch.rand(n) < 0.5
    cache = torch.classes.paired.WeightCache(mask, hidden, gate, up, down)
    new = mask.clone(); new[:20] = ~new[:20]
    cache.update_active_weights(new)
    m = int(new.sum())
    assert cache.get_num_active() == m
    w, d = cache.get_concat_weight(), cache.get_active_down_weight()
    assert w.shape == (m, 2 * hidden) and d.shape == (hidden, m)
    rows = cache.active_indices()
    assert torch.equal(w, torch.cat([gate, up], 1)[rows]) and torch.equal(d, down[:, rows])
    assert "parallel=" in torch.ops.paired.build_info()
    print("OK")
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PAIRED_REPLACEMENT_BUILD_DIR"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.parametrize("imports", ["import paired_replacement\nimport torch",
                                     "import torch\nimport paired_replacement",
                                     "import torch\nfrom paired_replacement import reference"])
def test_seed_usage_after_one_import(imports):
    proc = _run(SEED_USAGE.format(imports=imports))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "OK"


def test_without_the_import_the_class_does_not_exist():
    """The control: it is the import that registers the class (no other path loads it)."""
    proc = _run(SEED_USAGE.format(imports="import torch"))
    assert proc.returncode != 0
    assert "paired" in proc.stderr


def test_torch_free_tools_do_not_import_torch():
    code = ("import sys, paired_replacement, paired_replacement.reference, paired_replacement.analysis\n"
            "import paired_replacement.analysis.merge\n"
            "print('torch' in sys.modules)")
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "False"


def test_a_host_build_can_still_be_chosen_after_the_import(tmp_path):
    """The import fixes no library: load_extension(DIR) before first use still decides."""
    code = textwrap.dedent(
        """
        import torch, paired_replacement as pr
        from paired_replacement import _extension
        assert _extension.loaded_library() is None     # the import loaded nothing
        torch.ops.paired.build_info()                  # first use loads the default library
        assert _extension.loaded_library() is not None
        print("OK")
        """
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _small_cache():
    # a fixed mask with active and inactive rows: a random one is all-off (or all-on) once in
    # 512 runs, and then a "rebuild" of the empty set writes nothing (CI met it once)
    n, hidden = 10, 4
    mask = torch.tensor([True, False, True, True, False, False, True, False, True, False])
    return WeightCache(mask, hidden, torch.randn(n, hidden), torch.randn(n, hidden),
                       torch.randn(hidden, n))


@pytest.mark.parametrize("how", [copy.copy, copy.deepcopy, pickle.dumps])
def test_copy_deepcopy_and_pickle_are_refused_clearly(how):
    cache = _small_cache()
    with pytest.raises(TypeError, match="WeightCache cannot be"):
        how(cache)
    cache.check_invariants()


def test_last_update_work_is_a_named_tuple():
    cache = _small_cache()
    cache.update_from_indices([], [])
    assert cache.last_update_work() == UpdateWork(mask_words_scanned=0, copy_tasks=0)
    cache.hybrid_tau_frac = 2.0  # paired path: the diff reads the one mask word
    cache.update_active_weights(~cache.mask)
    assert cache.last_update_work() == UpdateWork(mask_words_scanned=1, copy_tasks=1)
    cache.hybrid_tau_frac = 0.0  # a rebuild with N/64 < m' log m' orders by a second scan
    cache.update_active_weights(~cache.mask)
    assert cache.last_update_stats().path == "rebuild"
    assert cache.last_update_work() == UpdateWork(mask_words_scanned=2, copy_tasks=1)


def test_readme_api_example_runs_as_written():
    """The README's API block is executed as it stands (in a fresh process: it imports first)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    code = block + textwrap.dedent(
        """
        assert w.shape == (2048, 2 * H) and d.shape == (H, 2048)
        assert cache.last_update_stats().path == "paired" and cache.mask.sum() == 2049
        print("OK")
        """
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "OK"

"""The per-host build: compile into a folder with a manifest, reuse it, load it in a fresh process."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from paired_replacement import _extension, hostbuild

pytestmark = pytest.mark.slow

USE_BUILD = textwrap.dedent(
    """
    import sys, torch, paired_replacement as pr
    lib = pr.load_extension()            # picks PAIRED_REPLACEMENT_BUILD_DIR
    assert str(lib).startswith(sys.argv[1]), lib
    gate, up, down = torch.randn(70, 9), torch.randn(70, 9), torch.randn(9, 70)
    mask = torch.rand(70) < 0.5
    cache = pr.WeightCache(mask, 9, gate, up, down)
    new = mask.clone(); new[:20] = ~new[:20]
    cache.update_active_weights(new)
    idx = cache.active_indices()
    assert torch.equal(cache.get_concat_weight(), torch.cat([gate, up], 1)[idx])
    assert torch.equal(cache.get_active_down_weight(), down[:, idx])
    assert torch.equal(idx.sort().values, new.nonzero().squeeze(1))
    info = torch.ops.paired.build_info()
    assert "flags=-O3,-DNDEBUG,-march=native" in info or "-mcpu=native" in info, info
    # compiled with torch's parallel backend, so the row copies really use torch's threads
    backend = torch.__config__.parallel_info()
    assert ("parallel=openmp" in info) == ("ATen parallel backend: OpenMP" in backend), info
    print("OK", lib)
    """
)


@pytest.fixture(scope="module")
def host_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostbuild")
    proc = subprocess.run(
        [sys.executable, "-m", "paired_replacement.hostbuild", "--out", str(out)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout)


def test_manifest_describes_the_build(host_build):
    out, manifest = host_build
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert (out / manifest["library"]).is_file()
    assert manifest["source_sha256"] == hostbuild.source_hash(hostbuild.source_root())
    assert "-march=native" in manifest["cxxflags"] or "-mcpu=native" in manifest["cxxflags"]
    import torch

    assert manifest["torch_version"] == torch.__version__
    for key in ("compiler", "host", "cpu_model", "built_at", "python_version"):
        assert manifest[key]
    # the parallel backend is torch's, and OpenMP is compiled *and* linked in
    backend = torch.__config__.parallel_info().split("ATen parallel backend:")[1].splitlines()[0].strip()
    assert manifest["parallel_backend"] == backend
    if backend == "OpenMP":
        assert "-fopenmp" in manifest["cxxflags"] and "-fopenmp" in manifest["ldflags"]


def test_fresh_process_loads_the_host_build(host_build):
    out, _ = host_build
    env = {**os.environ, "PAIRED_REPLACEMENT_BUILD_DIR": str(out)}
    proc = subprocess.run([sys.executable, "-c", USE_BUILD, str(out)], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("OK")


def test_matching_manifest_is_reused(host_build):
    out, manifest = host_build
    library = out / manifest["library"]
    before = library.stat().st_mtime_ns
    again = hostbuild.build(out)  # same sources, flags, compiler, torch: no compile
    assert again == manifest
    assert library.stat().st_mtime_ns == before


def test_generic_flags_have_no_native_arch():
    assert not any("native" in f for f in hostbuild.host_flags(generic=True))


def test_folder_without_manifest_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        _extension.library_in_build_dir(tmp_path)


def test_manifest_naming_a_missing_library_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"library": "gone.so"}))
    with pytest.raises(FileNotFoundError, match="gone.so"):
        _extension.library_in_build_dir(tmp_path)


def test_second_different_library_in_one_process_is_refused(host_build):
    out, _ = host_build
    code = textwrap.dedent(
        """
        import sys, paired_replacement as pr
        pr.load_extension()                       # the pip-installed build
        try:
            pr.load_extension(sys.argv[1])        # a different library: must be refused
        except RuntimeError as e:
            assert "already loaded" in str(e), e
            print("refused")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PAIRED_REPLACEMENT_BUILD_DIR"}
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "refused"

"""The per-host build: compile into a folder with a manifest, reuse it, load it in a fresh process."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from paired_replacement import _extension, hostbuild
from paired_replacement.bench import common

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


# ---------------------------------------------------------------------------------------------
# micro on the host build
# ---------------------------------------------------------------------------------------------
MICRO_TINY = ["--rows", "256", "--m", "64", "--hidden", "32", "--steps", "4", "--k", "4",
              "--threads", "1", "--methods", "paired", "index_select", "--warm", "--fast",
              "--quiet"]


def test_micro_with_build_dir_measures_the_host_build(host_build, tmp_path):
    out, manifest = host_build
    csv = tmp_path / "micro.csv"
    # Any process that fell back to the default search (instead of --build-dir) would fail on
    # this folder without a manifest, the workers included.
    decoy = tmp_path / "not-a-build"
    decoy.mkdir()
    env = {**os.environ, _extension.BUILD_DIR_ENV: str(decoy)}
    proc = subprocess.run([sys.executable, "-m", "paired_replacement.bench", "micro", *MICRO_TINY,
                           "--build-dir", str(out), "--out", str(csv)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    frame = common.validate_csv(csv, "micro")
    assert len(frame) and set(frame["method"]) == {"paired", "index_select"}
    assert (frame["build_source"] != "pip").all()
    assert {Path(s).resolve() for s in frame["build_source"]} == {out.resolve()}
    # the flags are the host build's (the pip-installed build has no -march/-mcpu=native)
    assert set(frame["build_flags"]) == {",".join(manifest["cxxflags"])}


# ---------------------------------------------------------------------------------------------
# When build() compiles: a tiny source tree with the repository's file names and include graph
# (a real compile of it takes seconds). Every file puts a marker string into the library, so the
# library itself shows which version of each file it was compiled from.
# ---------------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"', re.M)
ISA_MACROS = ["__SSE4_2__", "__AVX__", "__AVX2__", "__FMA__", "__AVX512F__",
              "__ARM_FEATURE_DOTPROD", "__ARM_FEATURE_SVE", "__ARM_FEATURE_SVE2"]


def compiled_files(root: Path) -> list[str]:
    """hostbuild's SOURCES and every file they include with quotes, transitively (paths
    relative to ``root``; includes resolve next to the includer or under csrc/ as in the build)."""
    seen, todo = set(), list(hostbuild.SOURCES)
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        path = root / rel
        for name in INCLUDE.findall(path.read_text()):
            found = [c for c in (path.parent / name, root / "csrc" / name) if c.is_file()]
            assert found, f"{rel} includes {name!r}, found neither next to it nor under csrc/"
            todo.append(found[0].resolve().relative_to(root.resolve()).as_posix())
    return sorted(seen)


COMPILED = compiled_files(REPO)


def _marker(rel: str, version: str) -> str:
    return f"marker:{rel}:{version}"


def write_tiny_tree(root: Path) -> None:
    for rel in sorted({*COMPILED, *hostbuild.SOURCES, *hostbuild.HEADERS}):
        real = REPO / rel
        includes = INCLUDE.findall(real.read_text()) if rel in COMPILED else []
        ident = re.sub(r"\W", "_", rel)
        lines = ["#pragma once"] if rel not in hostbuild.SOURCES else []
        lines += [f'#include "{name}"' for name in includes]
        lines.append(f'extern "C" __attribute__((used)) const char pr_{ident}[] = '
                     f'"{_marker(rel, "v1")}";')
        if rel in hostbuild.SOURCES:
            lines += ["#define PR_STR2(...) #__VA_ARGS__",
                      "#define PR_STR(...) PR_STR2(__VA_ARGS__)",
                      'extern "C" __attribute__((used)) const char pr_flags[] = '
                      '"flags[" PR_STR(PAIRED_REPLACEMENT_BUILD_FLAGS) "]";',
                      'extern "C" __attribute__((used)) const char pr_isa[] = "isa["']
            for macro in ISA_MACROS:
                lines += [f"#ifdef {macro}", f'    "{macro};"', "#endif"]
            lines.append('    "]";')
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("\n".join(lines) + "\n")


def library_of(out: Path) -> Path:
    return out / f"{hostbuild.LIBRARY_NAME}.so"


def stamp(out: Path) -> tuple[int, int]:
    """(inode, mtime) of the built library: both stay put unless build() compiles."""
    st = library_of(out).stat()
    return st.st_ino, st.st_mtime_ns


def embedded(out: Path, what: str) -> str:
    """The ``what[...]`` string compiled into the library."""
    match = re.search(re.escape(what).encode() + rb"\[([^\]\x00]*)\]", library_of(out).read_bytes())
    assert match, f"no {what}[...] in {library_of(out)}"
    return match.group(1).decode()


def compiler_isa(flags: list[str]) -> set[str]:
    """The ISA macros the compiler defines with ``flags`` (what the library must show)."""
    cxx = os.environ.get("CXX", "c++")
    text = subprocess.run([cxx, *flags, "-dM", "-E", "-x", "c++", os.devnull], capture_output=True,
                          text=True, check=True).stdout
    defined = {line.split()[1] for line in text.splitlines() if line.startswith("#define ")}
    return {m for m in ISA_MACROS if m in defined}


def native_flag() -> list[str]:
    return [f for f in hostbuild.host_flags(generic=False) if f not in hostbuild.host_flags(True)]


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    """A tiny tree and its native build, made once; tests change copies of both."""
    root = tmp_path_factory.mktemp("tiny-src")
    write_tiny_tree(root)
    out = tmp_path_factory.mktemp("tiny-build")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAIRED_REPLACEMENT_SOURCE_ROOT", str(root))
        manifest = hostbuild.build(out)
    return root, out, manifest


@pytest.fixture
def tiny(tiny_build, tmp_path, monkeypatch):
    """This test's copy of the tiny tree (the source root) and of its build: (root, out)."""
    root, out, _ = tiny_build
    shutil.copytree(root, tmp_path / "src")
    shutil.copytree(out, tmp_path / "build", ignore=shutil.ignore_patterns("ninja"))
    monkeypatch.setenv("PAIRED_REPLACEMENT_SOURCE_ROOT", str(tmp_path / "src"))
    return tmp_path / "src", tmp_path / "build"


def test_tiny_tree_mirrors_the_sources_that_are_compiled(tiny_build):
    root, out, manifest = tiny_build
    assert compiled_files(root) == COMPILED  # same include graph as the repository
    assert len(COMPILED) > 1
    for rel in COMPILED:
        assert _marker(rel, "v1").encode() in library_of(out).read_bytes()
    assert embedded(out, "flags") == ",".join(manifest["cxxflags"])


def test_unchanged_tree_is_not_recompiled(tiny):
    _, out = tiny
    before, manifest = stamp(out), json.loads((out / "manifest.json").read_text())
    assert hostbuild.build(out) == manifest
    assert stamp(out) == before
    assert not (out / "ninja").exists()  # the compile step never started


@pytest.mark.parametrize("rel", COMPILED)
def test_a_change_to_any_compiled_file_recompiles(tiny, rel):
    root, out = tiny
    before, old = stamp(out), json.loads((out / "manifest.json").read_text())
    path = root / rel
    path.write_text(path.read_text().replace(_marker(rel, "v1"), _marker(rel, "v2")))
    manifest = hostbuild.build(out)
    assert stamp(out) != before, f"{rel} changed, the library was not rebuilt"
    data = library_of(out).read_bytes()
    assert _marker(rel, "v2").encode() in data and _marker(rel, "v1").encode() not in data
    assert manifest["source_sha256"] != old["source_sha256"]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    again = stamp(out)
    assert hostbuild.build(out) == manifest and stamp(out) == again  # and now it is current


def _other_flags(mp):
    mp.setattr(hostbuild, "BASE_FLAGS", ["-O2", "-DNDEBUG"])
    return "-O2"


def _other_torch(mp):
    mp.setattr(torch, "__version__", "0.0.0+elsewhere")
    return "0.0.0+elsewhere"


def _other_compiler(mp):
    mp.setattr(hostbuild, "compiler_version", lambda: "c++ (elsewhere) 0.0")
    return "c++ (elsewhere) 0.0"


@pytest.mark.parametrize("key, change", [("cxxflags", _other_flags),
                                         ("torch_version", _other_torch),
                                         ("compiler", _other_compiler)])
def test_a_change_of_what_the_manifest_records_recompiles(tiny, monkeypatch, key, change):
    _, out = tiny
    before = stamp(out)
    new = change(monkeypatch)
    manifest = hostbuild.build(out)
    assert stamp(out) != before, f"{key} changed, the library was not rebuilt"
    if key == "cxxflags":
        assert manifest["cxxflags"][0] == new and "-O3" not in manifest["cxxflags"]
        assert embedded(out, "flags").startswith(new + ",")   # what the compiler was given
        assert f" {new} " in (out / "ninja" / "build.ninja").read_text()
    else:
        assert manifest[key] == new
    again = stamp(out)
    assert hostbuild.build(out) == manifest and stamp(out) == again


def test_generic_compiles_without_native_arch(tiny, capsys):
    _, out = tiny
    native = native_flag()
    assert native and native[0] in embedded(out, "flags")  # the copied build is a native one
    # On a CPU where -march/-mcpu=native adds none of ISA_MACROS the object cannot tell them apart.
    isa_tells = compiler_isa([]) != compiler_isa(native)
    if isa_tells:
        assert set(filter(None, embedded(out, "isa").split(";"))) == compiler_isa(native)
    before = stamp(out)
    assert hostbuild.main(["--out", str(out), "--generic"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert stamp(out) != before
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert not any("native" in f for f in manifest["cxxflags"])
    # ... not only recorded: the compile command had none, and the object has only the ISA the
    # compiler assumes without -march/-mcpu
    assert "native" not in (out / "ninja" / "build.ninja").read_text()
    assert "native" not in embedded(out, "flags")
    if isa_tells:
        assert set(filter(None, embedded(out, "isa").split(";"))) == compiler_isa([])


def test_force_recompiles_an_unchanged_tree(tiny, capsys):
    _, out = tiny
    before, old = stamp(out), json.loads((out / "manifest.json").read_text())
    assert hostbuild.main(["--out", str(out), "--force"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert stamp(out) != before
    assert (out / "ninja" / "build.ninja").is_file()
    same = ("source_sha256", "cxxflags", "ldflags", "compiler", "torch_version")
    assert {k: manifest[k] for k in same} == {k: old[k] for k in same}


def _syntax_error(root, mp):
    path = root / hostbuild.SOURCES[0]
    good = path.read_text()
    path.write_text("this is not C++;\n" + good)
    return (lambda: path.write_text(good)), Path(hostbuild.SOURCES[0]).name


def _bad_flag(root, mp):
    mp.setattr(hostbuild, "BASE_FLAGS", [*hostbuild.BASE_FLAGS, "-fno-such-option-here"])
    return mp.undo, "-fno-such-option-here"


@pytest.mark.parametrize("previous", [False, True], ids=["empty-folder", "over-a-build"])
@pytest.mark.parametrize("breakage", [_syntax_error, _bad_flag], ids=["syntax-error", "bad-flag"])
def test_a_failed_compile_leaves_no_manifest_and_a_later_build_works(tiny, tmp_path, breakage,
                                                                    previous):
    root, out = tiny
    if not previous:
        out = tmp_path / "fresh"
    with pytest.MonkeyPatch.context() as mp:
        repair, named = breakage(root, mp)
        with pytest.raises(RuntimeError, match=f"building {hostbuild.LIBRARY_NAME} in .* failed") \
                as info:
            hostbuild.build(out)
        assert named in str(info.value)  # the compiler's own complaint is in the error
        assert not (out / "manifest.json").exists()
        with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
            _extension.library_in_build_dir(out)  # nothing can load the folder
        repair()
    manifest = hostbuild.build(out)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert _extension.library_in_build_dir(out) == library_of(out)
    assert embedded(out, "flags") == ",".join(hostbuild.host_flags(generic=False))

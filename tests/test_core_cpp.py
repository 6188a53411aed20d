"""Builds and runs the standalone C++ self-test of the header-only core.

* ``test_core_selftest_asan_ubsan`` compiles ``csrc/tests/core_selftest.cpp`` with the debug
  invariant checks on and AddressSanitizer + UndefinedBehaviorSanitizer, then runs it (randomized
  update sequences against a naive model, executor equivalence, bad input, settings, moves), once
  with the x86 SIMD paths and once with the portable paths (-DPAIRED_REPLACEMENT_NO_SIMD).
* ``test_header_compiles_standalone`` compiles ``csrc/paired_replacement/weight_cache.hpp`` on its
  own, with strict warnings and nothing but ``csrc`` on the include path (no torch), to prove it
  stands alone; likewise ``csrc/paired_replacement/row_ffn.hpp`` (the no-packing sparse FFN) and
  ``csrc/paired_replacement/file_pool.hpp`` (the file tier's reader, POSIX only).

Both need ``g++`` on PATH and are skipped otherwise.
"""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

from conftest import GXX, needs_gxx  # tests/ is on sys.path

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEADER = "paired_replacement/weight_cache.hpp"
ROW_FFN_HEADER = "paired_replacement/row_ffn.hpp"
FILE_POOL_HEADER = "paired_replacement/file_pool.hpp"
SELFTEST = "csrc/tests/core_selftest.cpp"



def _clean_env() -> dict[str, str]:
    """Environment without implicit include paths, so only what the command names is visible."""
    env = dict(os.environ)
    for var in ("CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH", "OBJC_INCLUDE_PATH"):
        env.pop(var, None)
    return env


def _run(cmd: list[str], *, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env if env is not None else _clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def _show(proc: subprocess.CompletedProcess, cmd: list[str]) -> str:
    return (f"command: {' '.join(cmd)}\nexit status: {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-20000:]}\n--- stderr ---\n{proc.stderr[-20000:]}")


@pytest.mark.slow
@needs_gxx
@pytest.mark.parametrize("simd", ["native-simd", "portable"])
def test_core_selftest_asan_ubsan(tmp_path, simd):
    # "portable" forces the scalar mask packing and memcpy row copies that ARM64 and other
    # non-x86 targets compile, so that path is exercised on this x86 machine too.
    exe = tmp_path / "core_selftest"
    compile_cmd = [
        GXX, "-std=c++17", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pedantic",
        "-DPAIRED_REPLACEMENT_DEBUG", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
        *(["-DPAIRED_REPLACEMENT_NO_SIMD"] if simd == "portable" else []),
        "-I", "csrc", SELFTEST, "-o", str(exe), "-pthread",
    ]
    proc = _run(compile_cmd, timeout=900)
    assert proc.returncode == 0, "compiling the C++ self-test failed\n" + _show(proc, compile_cmd)

    env = _clean_env()
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    # The self-test sets/unsets these itself; start from a known state.
    for var in ("WEIGHT_CACHE_GRAIN", "WEIGHT_CACHE_PAR_THRESHOLD", "WEIGHT_CACHE_HYBRID_TAU_FRAC"):
        env.pop(var, None)
    run_cmd = [str(exe)]
    proc = _run(run_cmd, timeout=600, env=env)
    assert proc.returncode == 0, "the C++ self-test failed\n" + _show(proc, run_cmd)
    assert "all checks passed" in proc.stdout, _show(proc, run_cmd)
    print(proc.stdout)


# The one-line TU of the brief, plus a variant that also instantiates the update templates (warnings
# inside a template body only appear once it is instantiated).
_TUS = {
    "include_only": f'#include "{HEADER}"\n',
    "instantiated": (
        f'#include "{HEADER}"\n'
        "namespace pr = paired_replacement;\n"
        "template void pr::WeightCache::update_from_mask<pr::SerialFor>(\n"
        "    const std::uint8_t*, std::int64_t, const pr::SerialFor&);\n"
        "template void pr::WeightCache::update_from_indices<pr::SerialFor>(\n"
        "    const std::int64_t*, std::int64_t, const std::int64_t*, std::int64_t,\n"
        "    const pr::SerialFor&);\n"
    ),
    # the file tier: the pool file reader (POSIX) on its own, and a cache on it
    "file_pool": (
        f'#include "{FILE_POOL_HEADER}"\n'
        "namespace pr = paired_replacement;\n"
        "pr::WeightCache open_file_cache(const char* path, const std::uint8_t* mask) {\n"
        "  auto source = std::make_shared<pr::FileRowSource>(path, 4);\n"
        "  return pr::WeightCache(source, mask, 1, pr::Settings{});\n"
        "}\n"
    ),
    "row_ffn_include_only": f'#include "{ROW_FFN_HEADER}"\n',
    # float rows (read in place) and 16-bit rows (the ToFloat conversion path; a bfloat16 bit
    # pattern stands in for a torch type), both on SerialFor.
    "row_ffn_instantiated": (
        f'#include "{ROW_FFN_HEADER}"\n'
        "#include <cstring>\n"
        "namespace pr = paired_replacement;\n"
        "struct FloatToFloat { float operator()(float v) const noexcept { return v; } };\n"
        "struct Bf16ToFloat {\n"
        "  float operator()(std::uint16_t v) const noexcept {\n"
        "    const std::uint32_t bits = static_cast<std::uint32_t>(v) << 16;\n"
        "    float f;\n"
        "    std::memcpy(&f, &bits, sizeof f);\n"
        "    return f;\n"
        "  }\n"
        "};\n"
        "template void pr::row_ffn<float, FloatToFloat, pr::SerialFor>(\n"
        "    const float*, std::int64_t, std::int64_t, const float*, std::int64_t, const float*,\n"
        "    std::int64_t, std::int64_t, const std::int64_t*, std::int64_t, bool, float*, float*,\n"
        "    std::int64_t, const FloatToFloat&, const pr::SerialFor&);\n"
        "template void pr::row_ffn<std::uint16_t, Bf16ToFloat, pr::SerialFor>(\n"
        "    const std::uint16_t*, std::int64_t, std::int64_t, const std::uint16_t*, std::int64_t,\n"
        "    const std::uint16_t*, std::int64_t, std::int64_t, const std::int64_t*, std::int64_t,\n"
        "    bool, float*, float*, std::int64_t, const Bf16ToFloat&, const pr::SerialFor&);\n"
        "template std::size_t pr::row_ffn_scratch_floats<float>(std::int64_t, std::int64_t, bool,\n"
        "                                                       std::int64_t);\n"
        "template std::size_t pr::row_ffn_scratch_floats<std::uint16_t>(std::int64_t, std::int64_t,\n"
        "                                                               bool, std::int64_t);\n"
    ),
}


@needs_gxx
@pytest.mark.parametrize("variant", sorted(_TUS))
def test_header_compiles_standalone(tmp_path, variant):
    tu = tmp_path / f"{variant}.cpp"
    tu.write_text(_TUS[variant])
    deps = tmp_path / f"{variant}.d"
    cmd = [
        GXX, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wconversion", "-Wshadow",
        "-I", "csrc", "-MD", "-MF", str(deps), "-c", str(tu), "-o", str(tmp_path / f"{variant}.o"),
    ]
    proc = _run(cmd, timeout=300)
    assert proc.returncode == 0, "the header does not compile on its own\n" + _show(proc, cmd)
    included = deps.read_text()
    for marker in ("torch", "ATen", "c10", "pybind11", "Python.h"):
        assert marker not in included, f"the header pulled in {marker!r}:\n{included}"

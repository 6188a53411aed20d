"""Builds the PyTorch extension paired_replacement._C (ahead of time, generic flags).

Use `pip install --no-build-isolation -e .`. Host-tuned builds (-march=native) for the pipeline
come from `paired-replacement-build` (src/paired_replacement/hostbuild.py) instead. Both compile
and link with torch's parallel backend (-fopenmp for OpenMP; see _buildflags.py), without which
the cache's row copies would silently run on one thread.
"""
import importlib.util
from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = Path(__file__).parent.resolve()


def _load_buildflags():
    # By path: the package itself is not importable before it is installed.
    spec = importlib.util.spec_from_file_location(
        "_paired_replacement_buildflags", ROOT / "src" / "paired_replacement" / "_buildflags.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PARALLEL_CFLAGS, PARALLEL_LDFLAGS = _load_buildflags().parallel_flags()
# generic: the wheel may run on any x86-64 / arm64 host
FLAGS = ["-O3", "-DNDEBUG", *PARALLEL_CFLAGS]

setup(
    ext_modules=[
        CppExtension(
            name="paired_replacement._C",
            sources=["csrc/binding/weight_cache_torch.cpp"],
            include_dirs=[str(ROOT / "csrc")],
            extra_compile_args=[*FLAGS, f"-DPAIRED_REPLACEMENT_BUILD_FLAGS={','.join(FLAGS)}"],
            extra_link_args=PARALLEL_LDFLAGS,
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)

"""Builds the PyTorch extension paired_replacement._C (ahead of time, generic flags).

Use `pip install --no-build-isolation -e .`. Host-tuned builds (-march=native) for the pipeline
come from `paired-replacement-build` (src/paired_replacement/hostbuild.py) instead.
"""
from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = Path(__file__).parent.resolve()
FLAGS = ["-O3", "-DNDEBUG"]  # generic: the wheel may run on any x86-64 / arm64 host

setup(
    ext_modules=[
        CppExtension(
            name="paired_replacement._C",
            sources=["csrc/binding/weight_cache_torch.cpp"],
            include_dirs=[str(ROOT / "csrc")],
            extra_compile_args=[*FLAGS, f"-DPAIRED_REPLACEMENT_BUILD_FLAGS={','.join(FLAGS)}"],
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)

"""Only the compiled pause draw lives here; all other metadata is in pyproject.toml.

It is declared in setup.py rather than pyproject.toml because setuptools reads extension modules
from pyproject.toml only since 74.1, and the Dockerfile builds with the container's own setuptools
(--no-build-isolation). ``optional=True``: without a C compiler the install still succeeds, and
megatron_pause.pause uses the numpy twin of the draw, which gives the same pauses more slowly.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "megatron_pause._pause_kernels",
            sources=["megatron_pause/_pause_kernels.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)

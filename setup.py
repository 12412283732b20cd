"""Build hook for the optional C speedups; all metadata lives in pyproject.toml.

``sansio_aio._speedups`` (recvmmsg/sendmmsg/batched reads for the UDP and TUN drivers) is
built when a C compiler and the Python headers are there; ``optional=True`` means a
failed build leaves the pure-Python drivers, never a failed install.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sansio_aio._speedups",
            ["sansio_aio/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)

"""Build mailsrv, compiling every ``mailsrv/_speedups/*_c.pyx`` with Cython.

Each compiled module has a pure-Python twin, so the package still installs
(and works, only slower) where Cython or a C compiler is missing: a failed
extension build is reported and skipped, never fatal.  Set
``MAILSRV_REQUIRE_SPEEDUPS=1`` to make a failed build an error instead
(``make`` does, so that a broken .pyx never goes unnoticed).
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

REQUIRE = os.environ.get("MAILSRV_REQUIRE_SPEEDUPS") == "1"


def _extensions() -> list:
    sources = sorted(glob.glob(os.path.join("mailsrv", "_speedups", "*_c.pyx")))
    if not sources:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE:
            raise
        print("mailsrv: Cython not available, installing pure-Python twins only", file=sys.stderr)
        return []
    return cythonize(
        sources,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
        quiet=True,
    )


class OptionalBuildExt(build_ext):
    """build_ext that degrades to the pure-Python twins when compiling fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # report and fall back
            if REQUIRE:
                raise
            print(f"mailsrv: speedups not built ({exc}); using pure-Python twins", file=sys.stderr)

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            if REQUIRE:
                raise
            print(f"mailsrv: {ext.name} not built ({exc}); using its twin", file=sys.stderr)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})

"""setuptools hooks; all metadata lives in pyproject.toml.

- ``cffi_modules`` builds ``pyvmm._native`` (limited API, so the wheel is tagged abi3);
- ``build_py`` also builds what the wheel ships compiled from guest sources: the guest
  runtime library (``pyvmm/guest/lib/libpyvmm-guest.a``) and the doctor's probe guest
  (``pyvmm/probes/probe.elf``), through the same toolchain module as ``pyvmm guest build``.
  An editable install builds them in place, as build_ext does for the extension.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithGuests(build_py):
    def run(self) -> None:
        super().run()
        # pure-Python modules of the package itself (pyvmm/__init__ imports nothing eagerly)
        sys.path.insert(0, str(ROOT))
        from pyvmm.guest import toolchain as tc

        target = ROOT if getattr(self, "editable_mode", False) else Path(self.build_lib)
        pkg = target / "pyvmm"
        library = tc.build_runtime(pkg / "guest" / "lib", src=tc.SRC, include=tc.INCLUDE)
        tc.build([ROOT / "pyvmm" / "probes" / "probe.c"], pkg / "probes" / "probe.elf",
                 library=library)


setup(
    cffi_modules=["cbindings/build_native.py:ffibuilder"],
    cmdclass={"build_py": BuildPyWithGuests},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)

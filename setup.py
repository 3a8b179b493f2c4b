"""setuptools hooks; all metadata lives in pyproject.toml.

- ``cffi_modules`` builds ``pyvmm._native`` (limited API, so the wheel is tagged abi3);
- ``build_py`` also builds what the wheel ships compiled from guest sources: the guest
  runtime library (``pyvmm/guest/lib/libpyvmm-guest.a``) and the doctor's probe guest
  (``pyvmm/probes/probe.elf``), through the same toolchain module as ``pyvmm guest build``.
  An editable install builds them in place, as build_ext does for the extension.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _toolchain():
    spec = importlib.util.spec_from_file_location("_pyvmm_guest_toolchain",
                                                  ROOT / "pyvmm" / "guest" / "toolchain.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses and friends look themselves up here
    spec.loader.exec_module(mod)
    return mod


class BuildPyWithGuests(build_py):
    def run(self) -> None:
        super().run()
        tc = _toolchain()
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

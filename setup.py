"""setuptools hooks; all metadata lives in pyproject.toml.

- ``cffi_modules`` builds ``pyvmm._native`` (limited API, so the wheel is tagged abi3);
- ``build_py`` also builds the doctor's probe guest (``pyvmm/probes/probe.elf``) with the
  guest runtime, through the same toolchain module as ``pyvmm guest build``, and copies the
  SDK's reference (``docs/guests.md``) in as ``pyvmm/guest/docs/guests.md``.  The runtime
  library itself is not shipped: the installed package compiles it once from its
  installed sources, so its debug info names them.  An editable install builds the
  library in place (``pyvmm/guest/lib``), as build_ext does for the extension.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
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

        editable = getattr(self, "editable_mode", False)
        pkg = (ROOT if editable else Path(self.build_lib)) / "pyvmm"
        with tempfile.TemporaryDirectory(prefix="pyvmm-rt-") as tmp:
            # in place for an editable install; for a wheel only for the probe guest: the
            # installed pyvmm compiles it from its installed sources (toolchain.runtime_library)
            library = tc.build_runtime(pkg / "guest" / "lib" if editable else Path(tmp),
                                       src=tc.SRC, include=tc.INCLUDE)
            tc.build([ROOT / "pyvmm" / "probes" / "probe.c"], pkg / "probes" / "probe.elf",
                     library=library)
        if not editable:  # an editable install reads docs/ itself
            # the SDK's reference, for `pyvmm guest docs` after a wheel install
            docs = pkg / "guest" / "docs"
            docs.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / "docs" / "guests.md", docs / "guests.md")


setup(
    cffi_modules=["cbindings/build_native.py:ffibuilder"],
    cmdclass={"build_py": BuildPyWithGuests},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)

"""The installed pyvmm, whatever the working directory: every bench script imports this
first.

A bench measures what users run, the installed package (``make`` installs the wheel into
.venv).  Python puts a script's own directory (bench/) on ``sys.path``, never the working
directory, so the scripts' own imports find the installed package; a child Python gets
``-P`` for the same reason (``python -c`` and ``-m`` put the working directory first, and a
run from the repository root would import the source tree, which has no ``_native``).
:func:`require_installed` refuses a pyvmm imported from this checkout's source tree (an
editable install or a PYTHONPATH), in one line.
"""

from __future__ import annotations

import sys
from pathlib import Path

SOURCE_TREE = Path(__file__).resolve().parent.parent / "pyvmm"
_SCRIPT = Path(sys.executable).parent / "pyvmm"
#: the ``pyvmm`` command installed beside this interpreter (its console script, not a
#: pyenv shim, which adds ~40 ms), or the same through ``python -P -m pyvmm``
PYVMM: list[str] = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-P", "-m", "pyvmm"]


def require_installed() -> None:
    """Exit with one line unless ``pyvmm`` is the installed package."""
    import pyvmm

    where = Path(pyvmm.__file__).resolve()
    if where.is_relative_to(SOURCE_TREE):
        raise SystemExit(f"bench: pyvmm was imported from the source tree ({where}), not the "
                         "installed package: run `make bench` (or .venv/bin/python bench/...) "
                         "without an editable install or PYTHONPATH")


require_installed()

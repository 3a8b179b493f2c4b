"""Running the ``pyvmm`` command as a user does: the console script installed beside this
interpreter (``python -P -m pyvmm`` where there is none, so that the current directory,
maybe a source checkout, never shadows the installed package)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_SCRIPT = Path(sys.executable).parent / "pyvmm"
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-P", "-m", "pyvmm"]


def pyvmm(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
          **kw: object) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ, **(env or {}))
    # errors="replace": a guest's console may write any bytes (mutated images do)
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, errors="replace",
                          env=e, timeout=timeout, **kw)  # type: ignore[call-overload]

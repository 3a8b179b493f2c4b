"""The files ``pyvmm run`` writes besides guest output: ``--core``, ``--trace`` and
``--save-at-sync``'s snapshot (its *artefacts*).

A typo in such a path must not cost the user the run: each path is checked before the guest
starts (:func:`check_output_path`, a usage error, status 2), so a missing directory or a
read-only one is found in a second instead of after a long run.  What can still fail later
(a full disk) must not hide what the guest did: :class:`Artefacts` keeps each failure's one
line until the guest's own outcome has been reported, and the guest's status stands.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from pyvmm.errors import ConfigError, PyvmmError
from pyvmm.loader.source import shown


def check_output_path(path: str, option: str, *, regular_only: bool = False) -> None:
    """ConfigError (one line naming ``option``) when ``path`` cannot be written: its
    directory is missing or not writable, it is a directory, or (``regular_only``, for
    files replaced by rename) it exists and is not a regular file."""
    name = shown(path)
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:  # ENOTDIR (a file as a directory), ELOOP, EACCES on the way
        raise ConfigError(f"{option} {name}: {e.strerror}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{option} {name}: is a directory; give a file name")
    if st is not None and regular_only and not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{option} {name}: exists and is not a regular file (a device, FIFO "
                          "or socket); give the name of a file to create or replace")
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise ConfigError(f"{option} {name}: directory {shown(parent)} does not exist")
    writable = os.access(path, os.W_OK) if st is not None and not regular_only else \
        os.access(parent, os.W_OK | os.X_OK)
    if not writable:
        where = name if st is not None and not regular_only else f"directory {shown(parent)}"
        raise ConfigError(f"{option} {name}: permission denied ({where} is not writable)")


class Artefacts:
    """Writes artefacts after (or during) a run, keeping failures as lines to say once the
    guest's outcome has been said."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def write(self, what: str, path: str, writer: Callable[[], None]) -> bool:
        """Run ``writer``; on failure keep one line (``what`` could not be written to
        ``path`` and why) and return False."""
        try:
            writer()
        except PyvmmError as e:
            self.failures.append(str(e))
        except OSError as e:
            self.failures.append(f"cannot write the {what} to {shown(path)}: "
                                 f"{e.strerror or e}")
        except MemoryError:
            self.failures.append(f"cannot write the {what} to {shown(path)}: out of memory")
        else:
            return True
        return False

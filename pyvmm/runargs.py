"""``pyvmm run GUEST`` with plain options, read without click.

Importing click costs a ``pyvmm run`` of a small guest about a fifth of its whole time
(click.core, and through it inspect, typing, datetime, uuid, platform, gettext;
bench/run.py, row 3), more than KVM's own set-up.  The command lines a CLI user, CI job or
suite runner gives most (``pyvmm run kernel.flat --timeout 90 --cpus 2 --append smp
--exit-code qemu``: the options :meth:`pyvmm.suite.model.SuiteTest.command_line` writes)
are read here instead; anything else (help, any other option, a value click would refuse,
a repeated option, shell completion) returns None, and click reads the command line as it
always did, errors included.  So this reader only has to agree with click where it
accepts: ``tests/unit/test_quick_run.py`` holds it to click's own parse of the
same arguments, and to :data:`RUN_DEFAULTS` being what click gives every parameter of
``run`` that the command line leaves out (an option added to ``run`` fails it until it is
added here).
"""

from __future__ import annotations

import math
import os
import stat

from pyvmm.config import IRQCHIP_MODES, MAX_CPUS, memory_size
from pyvmm.errors import ConfigError

#: every parameter of ``pyvmm run`` (pyvmm.cli) and what click gives it when the command
#: line does not set it
RUN_DEFAULTS: dict[str, object] = {
    "guest": None, "mem": None, "cpus": 1, "timeout": None, "cmdline": "", "initrd": None,
    "fmt": None, "exit_code_mode": "raw", "irqchip": "kernel", "pit": None,
    "cpu_features": "", "strict_io": False, "stats": False, "python_loop": False,
    "gdb": None, "gdb_default": False, "gdb_no_wait": False, "gdb_allow_remote": False,
    "core": None, "trace": None, "kvm_trace": None, "kvm_stacks": None, "kvm_stat": False,
    "save_at": None, "from_snapshot": None, "input_file": None, "verbose": False,
}

#: the flags read here: option -> (parameter, value)
_FLAGS: dict[str, tuple[str, object]] = {"--pit": ("pit", True), "--no-pit": ("pit", False),
                                         "--strict-io": ("strict_io", True)}
#: the options with a value read here: option -> parameter
_VALUES = {"--mem": "mem", "--cpus": "cpus", "--timeout": "timeout", "--append": "cmdline",
           "--initrd": "initrd", "--irqchip": "irqchip", "--exit-code": "exit_code_mode",
           "--cpu-features": "cpu_features"}


class _Refused(Exception):
    """A value click would refuse (or that this reader leaves to click)."""


def quick_run_args(args: list[str]) -> dict[str, object] | None:
    """The parameters of ``run`` for ``args`` (the command line after ``pyvmm``), or None
    where click must read it."""
    if len(args) < 2 or args[0] != "run" or os.environ.get("_PYVMM_COMPLETE"):
        return None
    params = dict(RUN_DEFAULTS)
    seen: set[str] = set()
    rest = args[1:]
    try:
        while rest:
            word = rest.pop(0)
            value: object
            if not word.startswith("-") or word == "-":
                name, value = "guest", _path(word)
            elif word in _FLAGS:
                name, value = _FLAGS[word]
            else:
                option, eq, text = word.partition("=")
                if option not in _VALUES:
                    return None
                if not eq:
                    if not rest:
                        return None
                    text = rest.pop(0)
                name = _VALUES[option]
                value = _convert(name, text)
            if name in seen:  # click takes the last; rare enough to leave to it
                return None
            seen.add(name)
            params[name] = value
    except _Refused:
        return None
    return params if params["guest"] is not None else None


def _convert(name: str, text: str) -> object:
    """``text`` as click's type and callback for parameter ``name`` make it."""
    try:
        if name == "mem":
            return memory_size(text)
        if name == "cpus":
            cpus = int(text)
            if not 1 <= cpus <= MAX_CPUS:
                raise _Refused
            return cpus
        if name == "timeout":
            timeout = float(text)
            if not (math.isfinite(timeout) and timeout > 0):
                raise _Refused
            return timeout
    except (ValueError, ConfigError):
        raise _Refused from None
    if name == "irqchip" and text not in IRQCHIP_MODES:
        raise _Refused
    if name == "exit_code_mode" and text not in ("raw", "qemu"):
        raise _Refused
    if name == "initrd":
        return _path(text)
    return text


def _path(text: str) -> str:
    """click.Path(dir_okay=False)'s checks: a path that exists must be readable and no
    directory (what does not exist is the command's to report)."""
    try:
        st = os.stat(text)
    except OSError:
        return text
    except ValueError:  # a NUL in it: click's own error, whatever it is
        raise _Refused from None
    if stat.S_ISDIR(st.st_mode) or not os.access(text, os.R_OK):
        raise _Refused
    return text

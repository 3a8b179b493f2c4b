"""What a :class:`~pyvmm.machine.Machine` may be built and run with: the checked
arguments (RAM size, vCPUs, interrupt controller, timeouts).

One place for these rules, below everything that needs them: the machine checks its
arguments here, and a snapshot file's machine description (``pyvmm.snapshot_file``), an
untrusted copy of the same arguments, is checked against the same limits.
"""

from __future__ import annotations

import math

from pyvmm.errors import ConfigError
from pyvmm.x86 import layout

#: "kernel": KVM_CREATE_IRQCHIP (PIC, IOAPIC and LAPICs in KVM); "split": only the LAPICs in
#: KVM (KVM_CAP_SPLIT_IRQCHIP; IOAPIC/PIC accesses exit); "none": no interrupt controller.
IRQCHIP_MODES = ("kernel", "split", "none")
SPLIT_IRQCHIP_PINS = 24
#: the guest runtime has stacks for 64 APs; KVM_CAP_MAX_VCPUS may allow fewer
MAX_CPUS = 64
#: what QEMU's -kernel gives a multiboot kernel by default
MULTIBOOT_MEM = 128 << 20


def seconds_option(ctx: object, param: object, value: float | None) -> float | None:
    """click's callback for an option of seconds (``pyvmm run --timeout``, ``pyvmm
    fuzz-target --timeout``): None, or a finite number > 0.  NaN or infinity would be a
    deadline nothing reaches.  click is imported only to refuse a value: this module is
    on the path of a plain run, which does not load click."""
    if value is not None and not (math.isfinite(value) and value > 0):
        import click

        raise click.BadParameter(f"{value} is not a positive number of seconds")
    return value


def check_timeout(timeout: float | None) -> float | None:
    """``timeout`` as the run and wait methods take it: None (no limit) or seconds >= 0;
    infinity is None.  TypeError for a non-number, ValueError for a negative or NaN one."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if not timeout >= 0:  # NaN too
        raise ConfigError(f"timeout {timeout} is not a number of seconds >= 0 (None: no limit)")
    return None if math.isinf(timeout) else timeout


def memory_size(mem: int | str) -> int:
    """``mem`` in bytes: an int is bytes; a string takes K/M/G/T suffixes and a bare number
    is MiB, as QEMU's ``-m`` (and ``pyvmm run --mem``).  ConfigError for sizes a guest
    cannot have here; for an int that is no whole number of pages it asks whether MiB were
    meant (``mem=64`` is 64 bytes, ``--mem 64`` 64 MiB).  A string's answer is kept:
    machines are made by the thousand with the same few sizes."""
    if type(mem) is str and mem in _SIZES:
        return _SIZES[mem]
    if isinstance(mem, bool) or not isinstance(mem, int | str):
        raise ConfigError(f"memory size must be an int (bytes) or a size string such as '64M', "
                          f"not {type(mem).__name__} {mem!r}")
    try:
        size = layout.parse_size(mem, default_unit=layout.MiB) if isinstance(mem, str) else mem
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if size <= 0 or size % 4096:
        hint = f" (an int is bytes: did you mean '{mem}M'?)" if isinstance(mem, int) and size > 0 else ""
        raise ConfigError(f"memory size {size} bytes is not a positive multiple of 4 KiB{hint}")
    host = layout.host_memory()
    if host and size > host:
        raise ConfigError(f"{layout.format_size(size)} of guest RAM is more than this host's "
                          f"{layout.format_size(host)} of memory")
    if type(mem) is str and len(_SIZES) < 64:
        _SIZES[mem] = size
    return size


#: :func:`memory_size` of the size strings seen so far (only sizes it accepted)
_SIZES: dict[str, int] = {}


def check_shape(cpus: int, irqchip: str, pit: bool) -> None:
    """ConfigError for a vCPU count, interrupt controller and PIT that do not go together."""
    if not 1 <= cpus <= MAX_CPUS:
        raise ConfigError(f"cpus must be 1..{MAX_CPUS}, not {cpus}")
    if irqchip not in IRQCHIP_MODES:
        raise ConfigError(f"irqchip must be one of {', '.join(IRQCHIP_MODES)}, not {irqchip!r}")
    if pit and irqchip != "kernel":
        raise ConfigError("the in-kernel PIT needs the in-kernel irqchip (irqchip='kernel')")
    if irqchip == "none" and cpus > 1:
        raise ConfigError("more than one vCPU needs an irqchip (INIT/SIPI go through the LAPIC)")

"""Building a machine for a guest file (``Machine.from_file``): the file is read and
checked first, so that a bad file costs no VM; multiboot kernels get what QEMU's
``-kernel`` gives them (128 MiB, the PIT, the PC platform)."""

from __future__ import annotations

import os
from collections.abc import Callable

from pyvmm.config import MULTIBOOT_MEM, memory_size
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.loader import LoadPlan, open_image
from pyvmm.memory import GuestMemory
from pyvmm.x86.entry import apply_entry

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:  # (GuestImage at run time loads the multiboot loader: ELF64 runs never need it)
    from typing import Any, Protocol, TypeVar

    from pyvmm.loader import GuestImage

    class Loadable(Protocol):
        """What :func:`from_file` asks of the machine ``make`` builds."""

        def add_pc_platform(self) -> object: ...

        def plan_for(self, image: GuestImage, *, cmdline: str = "",
                     initrd: str | os.PathLike[str] | None = None) -> LoadPlan: ...

        def load(self, plan: LoadPlan, image: GuestImage | None = None) -> None: ...

        def close(self) -> None: ...

    M = TypeVar("M", bound=Loadable)


def from_file(make: Callable[..., M], path: str | os.PathLike[str], fmt: str | None,
              cmdline: str, initrd: str | os.PathLike[str] | None, **kw: Any) -> M:
    """A machine built by ``make(cmdline=..., **kw)`` with the guest at ``path`` loaded."""
    mem = memory_size(kw["mem"]) if "mem" in kw else None
    image = open_image(path, mem=mem, fmt=fmt)
    if image.format == "multiboot":
        kw.setdefault("mem", MULTIBOOT_MEM)
        kw.setdefault("pit", kw.get("irqchip", "kernel") == "kernel")
    m = make(cmdline=cmdline, **kw)
    try:
        if image.format == "multiboot":
            m.add_pc_platform()
        m.load(m.plan_for(image, cmdline=cmdline, initrd=initrd), image)
    except BaseException:
        m.close()
        raise
    return m


def apply_plan(memory: GuestMemory, bsp: Vcpu, plan: LoadPlan) -> None:
    """A loader's plan into a machine: its bytes to RAM, its entry state to the BSP."""
    memory.write_many(plan.writes)
    apply_entry(bsp, plan.entry)

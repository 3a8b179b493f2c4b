"""Guest image loaders: a guest file -> one :class:`LoadPlan` -> ``Machine.load(plan)``.

:func:`open_image` reads the file once (bounded, regular files only; of a big ELF file only
the parts the loaders use), :func:`detect` picks
the format from its bytes, and the format's parser checks it; the image's ``plan(ram, ...)``
then lays it out against the machine's RAM.  Formats:

- ``elf64``: pyvmm's own convention (``boot.py``): an ELF64 x86-64 executable entered in
  long mode with RDI = the boot info;
- ``multiboot``: multiboot v1 kernels as QEMU's ``-kernel`` loads them (``multiboot.py``).
"""

from __future__ import annotations

import os

from pyvmm.errors import ConfigError, GuestImageError
from pyvmm.loader.boot import ElfImage, parse_elf64
from pyvmm.loader.mbheader import FLAG_ADDRESSES, HEADER_MAGIC, SEARCH, find_header
from pyvmm.loader.plan import LoadPlan
from pyvmm.loader.source import ImageBytes, read_file, shown
from pyvmm.loader.sparse import read_image
from pyvmm.loader.symbols import Symbols

__all__ = ["FORMATS", "ElfImage", "GuestImage", "LoadPlan", "MultibootImage", "Symbols", "detect",
           "open_image", "parse_image"]

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from typing import Any

    from pyvmm.loader.multiboot import MultibootImage

    GuestImage = ElfImage | MultibootImage

#: the multiboot header's magic as it appears in a file: files without it never look
#: further (and an ELF64 guest never loads the multiboot loader)
_MB_MAGIC = HEADER_MAGIC.to_bytes(4, "little")
_MB_SEARCH = SEARCH + 12  # a header starts in the first SEARCH bytes: magic, flags, checksum


def __getattr__(name: str) -> object:
    """``MultibootImage`` and ``GuestImage`` on first use (see _MB_MAGIC)."""
    if name in ("MultibootImage", "GuestImage"):
        from pyvmm.loader.multiboot import MultibootImage

        return MultibootImage if name == "MultibootImage" else ElfImage | MultibootImage
    raise AttributeError(f"module 'pyvmm.loader' has no attribute {name!r}")
FORMATS = ("elf64", "multiboot")
#: the guest file may carry symbols and debug information beyond what it loads
FILE_SLACK = 64 << 20
#: the most a guest file may be when the RAM size is not known yet
DEFAULT_LIMIT = 128 << 20


def detect(data: ImageBytes, name: str = "<guest>") -> str:
    """``elf64`` or ``multiboot``, from the file's first bytes, as QEMU's ``-kernel``
    decides: a multiboot header wins where it can be loaded as such (any ELF32, or any file
    whose header carries its load addresses, flag 16, an ELF64 too); otherwise an ELF64
    is pyvmm's own convention.  GuestImageError for anything else."""
    header = None
    if _MB_MAGIC in data[:_MB_SEARCH]:
        header = find_header(data)
    elf64 = data[:4] == b"\x7fELF" and data[4:5] == b"\x02"
    if header is not None and (not elf64 or header.flags & FLAG_ADDRESSES):
        return "multiboot"
    if elf64:
        return "elf64"
    if data[:4] == b"\x7fELF":
        raise GuestImageError(f"{name}: ELF32 image without a multiboot header; pyvmm runs "
                              "ELF64 guests and multiboot kernels")
    raise GuestImageError(f"{name}: not an ELF file and no multiboot header (bad magic)")


def parse_image(data: ImageBytes, name: str, fmt: str | None = None) -> GuestImage:
    """Check ``data`` as ``fmt`` (detected when None)."""
    fmt = fmt or detect(data, name)
    if fmt == "elf64":
        return parse_elf64(data, name)
    if fmt == "multiboot":
        from pyvmm.loader.multiboot import parse_multiboot

        return parse_multiboot(data, name)
    raise GuestImageError(f"{name}: unknown format {fmt!r} (one of {', '.join(FORMATS)})")


def open_image(path: str | os.PathLike[str], *, mem: int | None = None,
               fmt: str | None = None) -> GuestImage:
    """Read and check the guest file at ``path``; ``mem`` (the guest RAM, when known)
    bounds how much of a file is read at all."""
    limit = (mem or DEFAULT_LIMIT) + FILE_SLACK
    image = parse_image(read_image(path, limit), shown(path), fmt)
    if image.format == "multiboot":
        image.argv0 = os.fsencode(path)  # type: ignore[union-attr]
        if mem is not None:
            _check_multiboot_ram(image, mem)  # type: ignore[arg-type]
    return image


def _check_multiboot_ram(image: MultibootImage, mem: int) -> None:
    """A multiboot kernel loads at or above 1 MiB, over the PC's BIOS area: with less RAM
    than it reaches, say so and how much it needs (the PC platform's firmware tables at
    0xE0000 failed first, as an unnamed guest-memory error, status 122)."""
    from pyvmm.x86.layout import format_size

    need = max(image.end, 1 << 20)
    need = (need + 0xFFFFF) & ~0xFFFFF  # whole MiB, as --mem takes it
    if mem < need:
        raise GuestImageError(f"{image.path}: the guest has {format_size(mem)} of RAM; this "
                              f"multiboot kernel needs at least {format_size(need)} (it loads "
                              "above the PC's first MiB): give it more (--mem; 128M by default)")


def plan_for(image: GuestImage, ram: list[tuple[int, int]], ncpus: int, mem_size: int,
             cmdline: str = "", initrd: str | os.PathLike[str] | None = None) -> LoadPlan:
    """Lay ``image`` out against ``ram`` (the initrd is read here, bounded by the
    ``mem_size`` of RAM it must fit in).  The same image planned for the same RAM and
    arguments gives the same plan, kept on the image (a harness or fuzzer reusing a parsed
    image skips rebuilding page tables and boot info)."""
    data = None
    if initrd is not None:
        data = read_file(initrd, mem_size, what="initrd", error=ConfigError)
    try:
        args = os.fsencode(cmdline)
    except UnicodeError as e:
        raise ConfigError(f"the command line cannot be encoded: {e}") from None
    name = os.fsdecode(initrd) if initrd is not None else ""
    key = (tuple(ram), args, ncpus, data, name)
    plans: dict[Any, LoadPlan] = image.__dict__.setdefault("_plans", {})
    plan = plans.get(key)
    if plan is None:
        plan = image.plan(ram, cmdline=args, ncpus=ncpus, initrd=data, initrd_name=name)
        if len(plans) >= 8:
            plans.clear()
        plans[key] = plan
    return plan

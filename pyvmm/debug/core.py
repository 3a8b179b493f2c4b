"""ELF core files of a guest (``pyvmm run --core FILE``, ``Machine.write_core``).

The layout is a Linux x86-64 process core, which stock gdb reads: an ``ET_CORE`` ELF64
with one ``PT_NOTE`` (``NT_PRPSINFO``, then per vCPU ``NT_PRSTATUS`` with the registers
in ``user_regs_struct`` order and ``NT_FPREGSET`` with the FXSAVE image) and one
``PT_LOAD`` per run of guest memory, at the guest-virtual addresses the BSP's page tables
map (``p_paddr`` holds the guest-physical address).  Without paging the virtual address is
the physical one.  Each vCPU is a thread (``pr_pid`` = vCPU index + 1), so ``gdb guest.elf
core`` shows ``bt``, ``info registers``, ``info threads`` and ``x`` of the guest's data.

The page tables belong to the guest: the walk is bounded in entries and time, each
physical page of RAM is written once however many virtual addresses map it
(``pyvmm.debug.coremap``), so a core is never larger than guest RAM plus its headers, and
all-zero pages are left as holes in a sparse file.
"""

from __future__ import annotations

import os
import signal
import struct
from typing import TYPE_CHECKING, Any, Protocol

from pyvmm.debug.coremap import WalkLimit, core_segments, physical_segments
from pyvmm.errors import ExitStatus, GuestMemoryError, PyvmmError
from pyvmm.vstate.result import RunStatus
from pyvmm.x86.modes import PAGING_4LEVEL, paging_mode

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pyvmm.kvm.vcpu import Vcpu
    from pyvmm.memory import GuestMemory


class CoreSource(Protocol):
    """What a core is written from (``Machine`` is one): the vCPUs, BSP first, whose
    registers it holds; the RAM it copies; the guest image, whose path names the core."""

    @property
    def memory(self) -> GuestMemory: ...

    @property
    def vcpus(self) -> Sequence[Vcpu]: ...

    @property
    def image(self) -> object | None: ...

ET_CORE, EM_X86_64 = 4, 62
PT_LOAD, PT_NOTE = 1, 4
PF_RWX = 7
NT_PRSTATUS, NT_FPREGSET, NT_PRPSINFO = 1, 2, 3
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
PAGE = 4096
ZERO_PAGE = bytes(PAGE)
#: a core never holds more than this many segments (ELF's e_phnum is 16 bits)
MAX_SEGMENTS = 0xFF00
#: user_regs_struct order, as NT_PRSTATUS' pr_reg holds it
USER_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
             "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
             "gs_base", "ds", "es", "fs", "gs")
_SIGNALS = {RunStatus.CRASH: signal.SIGSEGV, RunStatus.ASSERT: signal.SIGABRT,
            RunStatus.TIMEOUT: signal.SIGALRM, RunStatus.IO_ERROR: signal.SIGBUS}


class CoreError(PyvmmError):
    """The core file could not be written (the path, the disk): an output the user asked
    for, so ``OUTPUT`` as the CLI's ``--core`` gives it, not an internal error."""

    status = ExitStatus.OUTPUT


def _note(kind: int, desc: bytes) -> bytes:
    name = b"CORE\0"
    pad = (-len(name)) % 4
    return (struct.pack("<III", len(name), len(desc), kind) + name + bytes(pad) + desc +
            bytes((-len(desc)) % 4))


def prstatus(vcpu_index: int, regs: dict[str, int], sregs: Any, signo: int) -> bytes:
    """``struct elf_prstatus`` (x86-64, 336 bytes) for one vCPU."""
    values = dict(regs, eflags=regs["rflags"], orig_rax=(1 << 64) - 1,
                  fs_base=int(sregs.fs.base), gs_base=int(sregs.gs.base),
                  **{n: int(getattr(sregs, n).selector) for n in ("cs", "ss", "ds", "es", "fs", "gs")})
    head = struct.pack("<iii", signo, 0, 0) + struct.pack("<h2x", signo) + bytes(16)
    head += struct.pack("<iiii", vcpu_index + 1, 0, 0, 0) + bytes(64)
    body = struct.pack("<27Q", *(values[n] & ((1 << 64) - 1) for n in USER_REGS))
    return head + body + struct.pack("<i4x", 1)


def fpregset(fpu: Any) -> bytes:
    """The 512-byte FXSAVE image (``user_fpregs_struct``) from KVM_GET_FPU."""
    out = bytearray(512)
    struct.pack_into("<HHBxHQQII", out, 0, int(fpu.fcw), int(fpu.fsw), int(fpu.ftwx),
                     int(fpu.last_opcode), int(fpu.last_ip), int(fpu.last_dp), int(fpu.mxcsr),
                     0xFFFF)
    for i in range(8):
        out[32 + 16 * i:32 + 16 * i + 16] = bytes(fpu.fpr[i][0:16])
    for i in range(16):
        out[160 + 16 * i:160 + 16 * i + 16] = bytes(fpu.xmm[i][0:16])
    return bytes(out)


def prpsinfo(name: str) -> bytes:
    """``struct elf_prpsinfo`` (x86-64, 136 bytes): state R, the guest's name."""
    fname = os.path.basename(name).encode()[:15]
    return struct.pack("<BcBBxxxxQIIiiii16s80s", 0, b"R", 0, 0, 0, 0, 0, 1, 0, 1, 1,
                       fname, name.encode()[:79])


def segments(machine: CoreSource, vcpu: Vcpu) -> list[tuple[int, int, int]]:
    """``(va, pa, size)`` runs of guest RAM as ``vcpu`` sees them (its page tables when
    paging is on, else physical addresses), each physical page at most once
    (``pyvmm.debug.coremap``): the core never holds more than guest RAM, however the
    guest's tables alias it.  Tables that are too large or too slow to walk give the
    physical layout; at most MAX_SEGMENTS runs are written."""
    sregs = vcpu.get_sregs()
    ram = machine.memory.ram_ranges()
    if paging_mode(sregs) == PAGING_4LEVEL:  # the tables a core's walk knows

        def read_table(pa: int) -> bytes | None:
            try:
                return machine.memory.read(pa, PAGE)
            except GuestMemoryError:
                return None

        try:
            maps = core_segments(read_table, int(sregs.cr3), ram)
        except WalkLimit:
            maps = []
        if maps:
            return maps[:MAX_SEGMENTS]
    return physical_segments(ram)[:MAX_SEGMENTS]


def write_core(machine: CoreSource, path: str | os.PathLike[str], *, status: RunStatus | None = None,
               name: str = "") -> None:
    """Write the core of ``machine`` to ``path``; ``status`` picks the signal the threads
    report (crash: SIGSEGV, assertion: SIGABRT, timeout: SIGALRM)."""
    signo = int(_SIGNALS.get(status, signal.SIGSEGV)) if status else int(signal.SIGSEGV)
    if not name and machine.image is not None:
        name = str(getattr(machine.image, "path", "") or "guest")
    notes = _note(NT_PRPSINFO, prpsinfo(name or "guest"))
    for vcpu in machine.vcpus:
        notes += _note(NT_PRSTATUS, prstatus(vcpu.id, vcpu.get_regs(), vcpu.get_sregs(), signo))
        notes += _note(NT_FPREGSET, fpregset(vcpu.get_fpu()))
    segs = segments(machine, machine.vcpus[0])
    phnum = 1 + len(segs)
    notes_off = EHDR.size + phnum * PHDR.size
    data_off = (notes_off + len(notes) + PAGE - 1) & ~(PAGE - 1)
    ident = b"\x7fELF" + bytes((2, 1, 1, 0)) + bytes(8)
    headers = [EHDR.pack(ident, ET_CORE, EM_X86_64, 1, 0, EHDR.size, 0, 0, EHDR.size,
                         PHDR.size, phnum, 0, 0, 0),
               PHDR.pack(PT_NOTE, 0, notes_off, 0, 0, len(notes), 0, 4)]
    off = data_off
    for va, pa, size in segs:
        headers.append(PHDR.pack(PT_LOAD, PF_RWX, off, va, pa, size, size, PAGE))
        off += size
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise CoreError(f"cannot write the core to {os.fsdecode(path)}: {e.strerror}") from None
    try:
        os.pwrite(fd, b"".join(headers) + notes, 0)
        off = data_off
        for _, pa, size in segs:
            _copy_ram(machine, fd, pa, size, off)
            off += size
        os.ftruncate(fd, off)
    except OSError as e:
        raise CoreError(f"cannot write the core to {os.fsdecode(path)}: {e.strerror}") from None
    finally:
        os.close(fd)


def _copy_ram(machine: CoreSource, fd: int, pa: int, size: int, off: int) -> None:
    """Copy guest RAM ``[pa, pa+size)`` to file offset ``off``, skipping zero pages."""
    chunk = 1 << 20
    for start in range(0, size, chunk):
        n = min(chunk, size - start)
        try:
            data = machine.memory.read(pa + start, n)
        except GuestMemoryError:
            continue
        view = memoryview(data)
        page = 0
        while page < n:
            end = page
            while end < n and view[end:end + PAGE] != ZERO_PAGE[:min(PAGE, n - end)]:
                end += PAGE
            if end > page:
                os.pwrite(fd, view[page:end], off + start + page)
                page = end
            else:
                page += PAGE

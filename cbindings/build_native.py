"""Build script for ``pyvmm._native`` (cffi, out-of-line API mode).

Kept apart from the runtime bindings (as the ``cryptography`` package does): setuptools
runs it at build time through ``cffi_modules`` in pyproject.toml.  Every struct below is
declared with ``...;`` so its layout, and every ioctl number, comes from the system's
real ``<linux/kvm.h>``: nothing about the ABI is written by hand in Python.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _load(path: Path) -> ModuleType:
    """A module of the package by its file: ``pyvmm/__init__`` and ``pyvmm/kvm/__init__``
    import the extension this script is about to build."""
    spec = importlib.util.spec_from_file_location(f"_pyvmm_build_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The ioctls pyvmm issues, by fd kind, with the capability each needs: one table, in the
# package (the wrappers look their numbers up in it by name), read here by path.
IOCTLS: dict[str, tuple[tuple[str, str | None], ...]] = _load(ROOT / "pyvmm" / "kvm" / "ioctls.py").IOCTLS


def _version() -> str:
    """pyvmm's version, as ``pyvmm/__init__.py`` writes it (the one place it is written):
    the extension carries it, and ``pyvmm.kvm.native`` refuses an extension built for
    another version (a stale ``.so`` left by an older install or an editable build)."""
    text = (ROOT / "pyvmm" / "__init__.py").read_text()
    m = re.search(r'^__version__ = "([^"\\]+)"$', text, re.M)
    if m is None:
        raise SystemExit("cbindings/build_native.py: no __version__ = \"...\" in pyvmm/__init__.py")
    return m.group(1)


VERSION = _version()

# Ioctl numbers and constants, taken from <linux/kvm.h> by the C compiler.
CONSTANTS = list(dict.fromkeys(sorted(
    {name for group in IOCTLS.values() for name, _ in group}
    | {cap for group in IOCTLS.values() for _, cap in group if cap}) + """
KVMIO KVM_API_VERSION
KVM_IRQCHIP_PIC_MASTER KVM_IRQCHIP_PIC_SLAVE KVM_IRQCHIP_IOAPIC
KVM_CAP_HLT KVM_CAP_NR_VCPUS KVM_CAP_MAX_VCPUS KVM_CAP_NR_MEMSLOTS
KVM_CAP_SYNC_REGS KVM_CAP_READONLY_MEM KVM_CAP_IMMEDIATE_EXIT
KVM_CAP_COALESCED_PIO KVM_CAP_TSC_DEADLINE_TIMER KVM_CAP_X2APIC_API KVM_CAP_X86_USER_SPACE_MSR
KVM_CAP_ADJUST_CLOCK KVM_CAP_IRQ_ROUTING KVM_CAP_TSC_CONTROL KVM_CAP_DIRTY_LOG_RING
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
KVM_CAP_NESTED_STATE KVM_CAP_X86_SMM KVM_CAP_EXIT_HYPERCALL KVM_CAP_SPLIT_IRQCHIP
KVM_CAP_X86_TRIPLE_FAULT_EVENT
KVM_MEM_LOG_DIRTY_PAGES KVM_MEM_READONLY
KVM_SYNC_X86_REGS KVM_SYNC_X86_SREGS KVM_SYNC_X86_EVENTS
KVM_EXIT_IO_IN KVM_EXIT_IO_OUT
KVM_MP_STATE_RUNNABLE KVM_MP_STATE_UNINITIALIZED KVM_MP_STATE_INIT_RECEIVED
KVM_MP_STATE_HALTED KVM_MP_STATE_SIPI_RECEIVED
KVM_GUESTDBG_ENABLE KVM_GUESTDBG_SINGLESTEP KVM_GUESTDBG_USE_SW_BP KVM_GUESTDBG_USE_HW_BP
KVM_IOEVENTFD_FLAG_DATAMATCH KVM_IOEVENTFD_FLAG_PIO KVM_IOEVENTFD_FLAG_DEASSIGN
KVM_PIT_SPEAKER_DUMMY KVM_PIT_FLAGS_HPET_LEGACY
KVM_IRQ_ROUTING_IRQCHIP
KVM_SYSTEM_EVENT_SHUTDOWN KVM_SYSTEM_EVENT_RESET KVM_SYSTEM_EVENT_CRASH
KVM_INTERNAL_ERROR_EMULATION KVM_INTERNAL_ERROR_SIMUL_EX KVM_INTERNAL_ERROR_DELIVERY_EV
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON
KVM_STATS_TYPE_MASK KVM_STATS_TYPE_CUMULATIVE KVM_STATS_TYPE_INSTANT KVM_STATS_TYPE_PEAK
KVM_STATS_TYPE_LINEAR_HIST KVM_STATS_TYPE_LOG_HIST
KVM_STATS_UNIT_MASK KVM_STATS_UNIT_NONE KVM_STATS_UNIT_BYTES KVM_STATS_UNIT_SECONDS
KVM_STATS_UNIT_CYCLES KVM_STATS_UNIT_BOOLEAN
KVM_STATS_BASE_MASK KVM_STATS_BASE_POW10 KVM_STATS_BASE_POW2
MADV_HUGEPAGE MADV_DONTNEED MADV_REMOVE
KVM_MSR_FILTER_READ KVM_MSR_FILTER_WRITE KVM_MSR_FILTER_DEFAULT_ALLOW KVM_MSR_FILTER_DEFAULT_DENY
KVM_MSR_FILTER_MAX_RANGES KVM_MSR_EXIT_REASON_INVAL KVM_MSR_EXIT_REASON_UNKNOWN
KVM_MSR_EXIT_REASON_FILTER
""".split()))  # noqa: SIM905 - one name per word reads best

EXIT_REASONS = [
    "UNKNOWN", "EXCEPTION", "IO", "HYPERCALL", "DEBUG", "HLT", "MMIO", "IRQ_WINDOW_OPEN",
    "SHUTDOWN", "FAIL_ENTRY", "INTR", "SET_TPR", "TPR_ACCESS", "NMI", "INTERNAL_ERROR",
    "SYSTEM_EVENT", "IOAPIC_EOI", "X86_RDMSR", "X86_WRMSR", "DIRTY_RING_FULL",
    "X86_BUS_LOCK", "NOTIFY",
]

# Views of kvm_run's anonymous union members, declared once for cdef and C source alike.
VIEWS = """
struct pyvmm_run_io { uint8_t direction; uint8_t size; uint16_t port; uint32_t count;
                      uint64_t data_offset; };
struct pyvmm_run_mmio { uint64_t phys_addr; uint8_t data[8]; uint32_t len; uint8_t is_write; };
struct pyvmm_run_internal { uint32_t suberror; uint32_t ndata; uint64_t data[16]; };
struct pyvmm_run_system_event { uint32_t type; uint32_t ndata; uint64_t data[16]; };
struct pyvmm_run_msr { uint8_t error; uint8_t pad[7]; uint32_t reason; uint32_t index;
                       uint64_t data; };
struct pyvmm_run_debug { uint32_t exception; uint32_t pad; uint64_t pc; uint64_t dr6;
                         uint64_t dr7; };
struct pyvmm_run_fail_entry { uint64_t hardware_entry_failure_reason; uint32_t cpu; };
"""

CDEF = """
struct kvm_userspace_memory_region {
    uint32_t slot; uint32_t flags; uint64_t guest_phys_addr; uint64_t memory_size;
    uint64_t userspace_addr; ...;
};
struct kvm_regs {
    uint64_t rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t rip, rflags; ...;
};
struct kvm_segment {
    uint64_t base; uint32_t limit; uint16_t selector; uint8_t type; uint8_t present, dpl,
    db, s, l, g, avl; uint8_t unusable; ...;
};
struct kvm_dtable { uint64_t base; uint16_t limit; ...; };
struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss; struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt; uint64_t cr0, cr2, cr3, cr4, cr8; uint64_t efer;
    uint64_t apic_base; uint64_t interrupt_bitmap[...]; ...;
};
struct kvm_fpu {
    uint8_t fpr[8][16]; uint16_t fcw; uint16_t fsw; uint8_t ftwx; uint16_t last_opcode;
    uint64_t last_ip; uint64_t last_dp; uint8_t xmm[16][16]; uint32_t mxcsr; ...;
};
struct kvm_msr_entry { uint32_t index; uint32_t reserved; uint64_t data; ...; };
struct kvm_msrs { uint32_t nmsrs; struct kvm_msr_entry entries[]; ...; };
struct kvm_msr_list { uint32_t nmsrs; uint32_t indices[]; ...; };
struct kvm_cpuid_entry2 {
    uint32_t function; uint32_t index; uint32_t flags; uint32_t eax, ebx, ecx, edx; ...;
};
struct kvm_cpuid2 { uint32_t nent; struct kvm_cpuid_entry2 entries[]; ...; };
struct kvm_lapic_state { char regs[...]; ...; };
struct kvm_mp_state { uint32_t mp_state; ...; };
struct kvm_xcr { uint32_t xcr; uint64_t value; ...; };
struct kvm_xcrs { uint32_t nr_xcrs; uint32_t flags; struct kvm_xcr xcrs[...]; ...; };
struct kvm_xsave { uint32_t region[...]; ...; };
struct kvm_vcpu_events {
    struct { uint8_t injected; uint8_t nr; uint8_t has_error_code; uint8_t pending;
             uint32_t error_code; } exception;
    struct { uint8_t injected; uint8_t nr; uint8_t soft; uint8_t shadow; } interrupt;
    struct { uint8_t injected; uint8_t pending; uint8_t masked; uint8_t pad; } nmi;
    uint32_t sipi_vector; uint32_t flags; ...;
};
struct kvm_debugregs { uint64_t db[4]; uint64_t dr6; uint64_t dr7; uint64_t flags; ...; };
struct kvm_clock_data { uint64_t clock; uint32_t flags; ...; };
struct kvm_guest_debug_arch { uint64_t debugreg[8]; ...; };
struct kvm_guest_debug { uint32_t control; uint32_t pad; struct kvm_guest_debug_arch arch; ...; };
struct kvm_irq_level { uint32_t irq; uint32_t level; ...; };
struct kvm_ioeventfd {
    uint64_t datamatch; uint64_t addr; uint32_t len; int32_t fd; uint32_t flags; ...;
};
struct kvm_irqfd { uint32_t fd; uint32_t gsi; uint32_t flags; uint32_t resamplefd; ...; };
struct kvm_dirty_log { uint32_t slot; void *dirty_bitmap; ...; };
struct kvm_pit_config { uint32_t flags; ...; };
struct kvm_enable_cap { uint32_t cap; uint32_t flags; uint64_t args[4]; ...; };
struct kvm_msi { uint32_t address_lo; uint32_t address_hi; uint32_t data; uint32_t flags; ...; };
struct kvm_coalesced_mmio_zone { uint64_t addr; uint32_t size; uint32_t pio; ...; };
struct kvm_translation {
    uint64_t linear_address; uint64_t physical_address; uint8_t valid; uint8_t writeable;
    uint8_t usermode; ...;
};
struct kvm_pic_state {
    uint8_t last_irr, irr, imr, isr, priority_add, irq_base, read_reg_select, poll,
    special_mask, init_state, auto_eoi, rotate_on_auto_eoi, special_fully_nested_mode,
    init4, elcr, elcr_mask; ...;
};
struct kvm_irqchip { uint32_t chip_id; uint32_t pad; ...; };
struct kvm_pit_channel_state {
    uint32_t count; uint16_t latched_count; uint8_t count_latched; uint8_t status_latched;
    uint8_t status; uint8_t read_state; uint8_t write_state; uint8_t write_latch;
    uint8_t rw_mode; uint8_t mode; uint8_t bcd; uint8_t gate; int64_t count_load_time; ...;
};
struct kvm_pit_state2 { struct kvm_pit_channel_state channels[3]; uint32_t flags; ...; };
struct kvm_irq_routing_irqchip { uint32_t irqchip; uint32_t pin; ...; };
struct kvm_irq_routing_entry { uint32_t gsi; uint32_t type; uint32_t flags; ...; };
struct kvm_irq_routing { uint32_t nr; uint32_t flags; struct kvm_irq_routing_entry entries[]; ...; };
struct kvm_irq_routing_irqchip *pyvmm_routing_irqchip(struct kvm_irq_routing_entry *e);
void pyvmm_host_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]);
struct kvm_pic_state *pyvmm_irqchip_pic(struct kvm_irqchip *chip);
struct kvm_msr_filter_range { uint32_t flags; uint32_t nmsrs; uint32_t base; uint8_t *bitmap; ...; };
struct kvm_msr_filter { uint32_t flags; struct kvm_msr_filter_range ranges[...]; ...; };
struct kvm_stats_header {
    uint32_t flags; uint32_t name_size; uint32_t num_desc; uint32_t id_offset;
    uint32_t desc_offset; uint32_t data_offset; ...;
};
struct kvm_stats_desc {
    uint32_t flags; int16_t exponent; uint16_t size; uint32_t offset; uint32_t bucket_size;
    ...;
};
struct kvm_sync_regs { struct kvm_regs regs; struct kvm_sregs sregs;
                       struct kvm_vcpu_events events; ...; };

/* kvm_run: its anonymous unions are reached through the VIEWS below. */
struct kvm_run {
    uint8_t request_interrupt_window; uint8_t immediate_exit;
    uint32_t exit_reason; uint8_t ready_for_interrupt_injection; uint8_t if_flag;
    uint16_t flags; uint64_t cr8; uint64_t apic_base;
    uint64_t kvm_valid_regs; uint64_t kvm_dirty_regs;
    ...;
};
""" + VIEWS + """
struct pyvmm_run_io *pyvmm_run_io(struct kvm_run *run);
struct pyvmm_run_mmio *pyvmm_run_mmio(struct kvm_run *run);
struct pyvmm_run_internal *pyvmm_run_internal(struct kvm_run *run);
struct pyvmm_run_system_event *pyvmm_run_system_event(struct kvm_run *run);
struct pyvmm_run_msr *pyvmm_run_msr(struct kvm_run *run);
struct pyvmm_run_debug *pyvmm_run_debug(struct kvm_run *run);
struct pyvmm_run_fail_entry *pyvmm_run_fail_entry(struct kvm_run *run);
struct kvm_sync_regs *pyvmm_run_sync_regs(struct kvm_run *run);
const char *pyvmm_native_version(void);
"""

# C side of the kvm_run views: each view is checked against the header's layout at
# compile time, so a kernel-header change that moves a field breaks the build, not a run.
SOURCE = r"""
#include <stddef.h>
#include <linux/kvm.h>
#include <sys/mman.h>
#include "runloop.h"
#include "setup.h"

""" + VIEWS + r"""
#define VIEW(name, member, type)                                                         \
    _Static_assert(sizeof(type) <= sizeof(((struct kvm_run *)0)->member), #name);         \
    static type *pyvmm_run_##name(struct kvm_run *run) { return (type *)&run->member; }


#define SAME(view, member, field) \
    _Static_assert(offsetof(struct view, field) == offsetof(struct kvm_run, member.field) - \
                   offsetof(struct kvm_run, member), #view "." #field)
SAME(pyvmm_run_io, io, port); SAME(pyvmm_run_io, io, count); SAME(pyvmm_run_io, io, data_offset);
SAME(pyvmm_run_mmio, mmio, data); SAME(pyvmm_run_mmio, mmio, len);
SAME(pyvmm_run_mmio, mmio, is_write);
SAME(pyvmm_run_internal, internal, ndata); SAME(pyvmm_run_internal, internal, data);
SAME(pyvmm_run_system_event, system_event, ndata);
SAME(pyvmm_run_msr, msr, reason); SAME(pyvmm_run_msr, msr, index); SAME(pyvmm_run_msr, msr, data);
SAME(pyvmm_run_debug, debug.arch, pc); SAME(pyvmm_run_debug, debug.arch, dr7);
SAME(pyvmm_run_fail_entry, fail_entry, cpu);

VIEW(io, io, struct pyvmm_run_io)
VIEW(mmio, mmio, struct pyvmm_run_mmio)
VIEW(internal, internal, struct pyvmm_run_internal)
VIEW(system_event, system_event, struct pyvmm_run_system_event)
VIEW(msr, msr, struct pyvmm_run_msr)
VIEW(debug, debug.arch, struct pyvmm_run_debug)
VIEW(fail_entry, fail_entry, struct pyvmm_run_fail_entry)
static struct kvm_sync_regs *pyvmm_run_sync_regs(struct kvm_run *run) { return &run->s.regs; }
static struct kvm_pic_state *pyvmm_irqchip_pic(struct kvm_irqchip *chip) { return &chip->chip.pic; }
static struct kvm_irq_routing_irqchip *pyvmm_routing_irqchip(struct kvm_irq_routing_entry *e)
{ return &e->u.irqchip; }
#include <cpuid.h>
/* CPUID of the host CPU itself (QEMU -cpu host copies leaves KVM leaves empty, such as the
 * brand string, from here) */
static void pyvmm_host_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4])
{ __cpuid_count(leaf, subleaf, out[0], out[1], out[2], out[3]); }
"""
# the pyvmm version this extension was built for (pyvmm.kvm.native checks it)
SOURCE += f'static const char *pyvmm_native_version(void) {{ return "{VERSION}"; }}\n'


#: a trailing comment that keeps a line of runloop.h's cdef region out of the cdef (a field
#: cffi need not see and cannot declare portably, such as a pthread_t)
HIDDEN = "/* not in cdef */"


def header_cdef(text: str) -> str:
    """The cdef of a header (runloop.h, setup.h): the text between each of its ``/* cdef-begin``
    and ``/* cdef-end */`` markers (constants with their values, the structs Python reads
    and the prototypes), as the compiler sees it, but for two changes: a line marked
    HIDDEN is left out, and each struct ends in ``...;`` so that cffi takes the layout from
    the compiler (and may skip the hidden fields).  The one declaration of ``struct pyvmm_loop``, ``struct
    pyvmm_reset`` and their kin."""
    regions = [part.split("*/", 1)[1].split("/* cdef-end */", 1)[0]
               for part in text.split("/* cdef-begin")[1:]]  # each region, in order
    lines = [line for region in regions for line in region.splitlines()
             if not line.rstrip().endswith(HIDDEN)]
    return re.sub(r"^};$", "    ...;\n};", "\n".join(lines), flags=re.M) + "\n"


def _cdef() -> str:
    consts = "\n".join(f"#define {name} ..." for name in CONSTANTS)
    exits = "\n".join(f"#define KVM_EXIT_{name} ..." for name in EXIT_REASONS)
    headers = "".join(header_cdef((HERE / h).read_text()) for h in ("runloop.h", "setup.h"))
    return (CDEF + headers + consts + "\n" + exits
            + "\n")


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "pyvmm._native",
    SOURCE,
    # setuptools wants paths relative to the project root, where it runs this script
    sources=["cbindings/runloop.c", "cbindings/setup.c"],
    include_dirs=["cbindings"],
    extra_compile_args=["-O2", "-Wall", "-Wno-unused-function", "-std=gnu11"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)

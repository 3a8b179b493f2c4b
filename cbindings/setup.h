/*
 * setup.h - a machine's set-up ioctls, several to a call.
 *
 * Creating a machine issues ~20 ioctls.  Each crossing from Python costs more than the
 * ioctl it makes (a cffi struct built field by field, the wrapper's checks), and the
 * interpreter runs cold after KVM_CREATE_VM has churned the caches; harnesses and
 * fuzzers create machines by the thousand.  So the fixed sequences are here, one call
 * each: Python prepares the arguments (once per process where they never change) and
 * keeps every decision; a failure returns which step failed and its errno, and Python
 * raises the KvmError naming that ioctl.
 */
#ifndef PYVMM_SETUP_H
#define PYVMM_SETUP_H

#include <stdint.h>
#include <linux/kvm.h>

/* cdef-begin: handed to cffi as it is (build_native.py), as runloop.h's region is. */
/* the step that failed (the return value of the calls below; 0: none) */
#define PYVMM_STEP_SET_CPUID2 1
#define PYVMM_STEP_SET_MSRS 2
#define PYVMM_STEP_SET_FPU 3
#define PYVMM_STEP_GET_LAPIC 4
#define PYVMM_STEP_SET_LAPIC 5
#define PYVMM_STEP_GET_SREGS 6
#define PYVMM_STEP_SET_SREGS 7
#define PYVMM_STEP_SET_REGS 8

/* What firmware leaves in a vCPU (pyvmm/x86/reset.py fills it). */
struct pyvmm_reset {
    struct kvm_cpuid2 *cpuid;
    struct kvm_msrs *msrs;
    struct kvm_fpu *fpu;             /* NULL: left as KVM has it */
    /* NULL without an in-kernel LAPIC; else receives the register page as set */
    struct kvm_lapic_state *lapic;
    uint32_t lint0;  /* LVT LINT0 and LINT1 (virtual-wire mode: ExtINT, NMI) */
    uint32_t lint1;
};

/* KVM_SET_CPUID2, KVM_SET_MSRS, KVM_SET_FPU (with r->fpu) and, with r->lapic, KVM_GET_LAPIC, LINT0/1
 * written into the page, KVM_SET_LAPIC.  0, or the PYVMM_STEP_ that failed (*err: errno). */
int pyvmm_vcpu_reset(int fd, const struct pyvmm_reset *r, int *err);

/* A vCPU's start: KVM_GET_SREGS, then the fields a CPU mode decides taken from `mode`
 * (CS, DS, ES, FS, GS, SS, GDT, IDT, CR0, CR3, CR4, EFER; the rest - TR, LDT, APIC base,
 * CR2, CR8 - stay as KVM has them), KVM_SET_SREGS, KVM_SET_REGS.  0 or the failed step. */
int pyvmm_vcpu_enter(int fd, const struct kvm_sregs *mode, const struct kvm_regs *regs, int *err);

/* `size` bytes of zeroed shared memory for guest RAM: a memfd (*fd) mapped MAP_SHARED |
 * MAP_NORESERVE, advised MADV_HUGEPAGE.  Where the host refuses a memfd of that size for
 * any reason but ENOMEM (a file-size limit, a seccomp policy), anonymous shared memory
 * instead (*fd = -1).  NULL on failure, *err the errno: *fd is PYVMM_RAM_NO_MEMFD when the
 * memfd itself was out of memory, else -1 (the mmap failed). */
#define PYVMM_RAM_NO_MEMFD -2
void *pyvmm_ram_map(uint64_t size, int *fd, int *err);
/* cdef-end */

#endif

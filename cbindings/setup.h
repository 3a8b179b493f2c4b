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
    struct kvm_fpu *fpu;
    /* NULL without an in-kernel LAPIC; else receives the register page as set */
    struct kvm_lapic_state *lapic;
    uint32_t lint0;  /* LVT LINT0 and LINT1 (virtual-wire mode: ExtINT, NMI) */
    uint32_t lint1;
};

/* KVM_SET_CPUID2, KVM_SET_MSRS, KVM_SET_FPU and, with r->lapic, KVM_GET_LAPIC, LINT0/1
 * written into the page, KVM_SET_LAPIC.  0, or the PYVMM_STEP_ that failed (*err: errno). */
int pyvmm_vcpu_reset(int fd, const struct pyvmm_reset *r, int *err);

/* A vCPU's start: KVM_GET_SREGS, then the fields a CPU mode decides taken from `mode`
 * (CS, DS, ES, FS, GS, SS, GDT, IDT, CR0, CR3, CR4, EFER; the rest - TR, LDT, APIC base,
 * CR2, CR8 - stay as KVM has them), KVM_SET_SREGS, KVM_SET_REGS.  0 or the failed step. */
int pyvmm_vcpu_enter(int fd, const struct kvm_sregs *mode, const struct kvm_regs *regs, int *err);

/* `size` bytes of zeroed shared memory for guest RAM: a memfd (*fd) mapped MAP_SHARED |
 * MAP_NORESERVE, advised MADV_HUGEPAGE.  Where the host refuses a memfd of that size for
 * any reason but ENOMEM (a file-size limit, a seccomp policy), anonymous shared memory
 * instead (*fd = -1).  NULL on failure: *err is the errno, *fd is -1. */
void *pyvmm_ram_map(uint64_t size, int *fd, int *err);
/* cdef-end */

/* cdef-begin: a snapshot's restore (pyvmm/snapshot.py), kept apart from the set-up above. */
#define PYVMM_STEP_SET_XSAVE 101
#define PYVMM_STEP_SET_FPU_STATE 102
#define PYVMM_STEP_SET_XCRS 103
#define PYVMM_STEP_SET_DEBUGREGS 104
#define PYVMM_STEP_SET_LAPIC_STATE 105
#define PYVMM_STEP_SET_MSRS_STATE 106
#define PYVMM_STEP_SET_VCPU_EVENTS 107
#define PYVMM_STEP_SET_MP_STATE 108
#define PYVMM_STEP_SET_SREGS_STATE 109
#define PYVMM_STEP_SET_REGS_STATE 110

/* One vCPU's saved state as the KVM_SET_* ioctls take it, built once per snapshot and
 * machine (Snapshot.prepared); an optional part is NULL where the snapshot has none. */
struct pyvmm_vcpu_state {
    struct kvm_sregs *sregs;
    struct kvm_regs *regs;
    void *xsave;                       /* this VM's XSAVE size (KVM_CAP_XSAVE2); or NULL: */
    struct kvm_fpu *fpu;               /* KVM_SET_FPU instead */
    struct kvm_xcrs *xcrs;
    struct kvm_debugregs *debugregs;
    struct kvm_lapic_state *lapic;
    struct kvm_msrs *msrs;
    struct kvm_vcpu_events *events;
    struct kvm_mp_state *mp_state;
};

/* KVM_SET_SREGS, _REGS, _XSAVE (or _FPU), _XCRS, _DEBUGREGS, _LAPIC, _MSRS, then - where KVM
 * took every MSR - _VCPU_EVENTS and _MP_STATE: the order KVM needs (special registers before
 * the LAPIC, the LAPIC before MSRs such as TSC_DEADLINE).  *nmsrs: how many MSRs KVM took;
 * fewer than msrs->nmsrs leaves the rest, the events and the MP state to the caller.  0, or
 * the PYVMM_STEP_ that failed (*err: errno). */
int pyvmm_vcpu_restore(int fd, const struct pyvmm_vcpu_state *s, int *nmsrs, int *err);
/* cdef-end */

#endif

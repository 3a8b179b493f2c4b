/*
 * setup.c - a machine's set-up ioctls, several to a call.  See setup.h for why.
 */
#define _GNU_SOURCE
#include "setup.h"

#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define APIC_LVT_LINT0 0x350
#define APIC_LVT_LINT1 0x360

/* one ioctl of a sequence: on failure, return its step with errno in *err */
#define STEP(step, call)        \
    do {                        \
        if ((call) < 0) {       \
            *err = errno;       \
            return (step);      \
        }                       \
    } while (0)

int pyvmm_vcpu_reset(int fd, const struct pyvmm_reset *r, int *err)
{
    *err = 0;
    STEP(PYVMM_STEP_SET_CPUID2, ioctl(fd, KVM_SET_CPUID2, r->cpuid));
    STEP(PYVMM_STEP_SET_MSRS, ioctl(fd, KVM_SET_MSRS, r->msrs));
    STEP(PYVMM_STEP_SET_FPU, ioctl(fd, KVM_SET_FPU, r->fpu));
    if (r->lapic) {
        STEP(PYVMM_STEP_GET_LAPIC, ioctl(fd, KVM_GET_LAPIC, r->lapic));
        memcpy(r->lapic->regs + APIC_LVT_LINT0, &r->lint0, 4); /* x86: little-endian */
        memcpy(r->lapic->regs + APIC_LVT_LINT1, &r->lint1, 4);
        STEP(PYVMM_STEP_SET_LAPIC, ioctl(fd, KVM_SET_LAPIC, r->lapic));
    }
    return 0;
}

int pyvmm_vcpu_enter(int fd, const struct kvm_sregs *mode, const struct kvm_regs *regs, int *err)
{
    struct kvm_sregs s;

    *err = 0;
    STEP(PYVMM_STEP_GET_SREGS, ioctl(fd, KVM_GET_SREGS, &s));
    s.cs = mode->cs;
    s.ds = mode->ds;
    s.es = mode->es;
    s.fs = mode->fs;
    s.gs = mode->gs;
    s.ss = mode->ss;
    s.gdt = mode->gdt;
    s.idt = mode->idt;
    s.cr0 = mode->cr0;
    s.cr3 = mode->cr3;
    s.cr4 = mode->cr4;
    s.efer = mode->efer;
    STEP(PYVMM_STEP_SET_SREGS, ioctl(fd, KVM_SET_SREGS, &s));
    STEP(PYVMM_STEP_SET_REGS, ioctl(fd, KVM_SET_REGS, regs));
    return 0;
}

void *pyvmm_ram_map(uint64_t size, int *fd, int *err)
{
    void *p;

    *err = 0;
    *fd = memfd_create("pyvmm-ram", MFD_CLOEXEC);
    if (*fd >= 0 && ftruncate(*fd, (off_t)size) < 0) {
        int e = errno;
        close(*fd);
        *fd = -1;
        errno = e;
    }
    if (*fd < 0 && errno == ENOMEM) {
        *err = ENOMEM;
        return NULL;
    }
    p = mmap(NULL, size, PROT_READ | PROT_WRITE,
             MAP_SHARED | MAP_NORESERVE | (*fd < 0 ? MAP_ANONYMOUS : 0), *fd, 0);
    if (p == MAP_FAILED) {
        *err = errno;
        if (*fd >= 0)
            close(*fd);
        *fd = -1;
        return NULL;
    }
    madvise(p, size, MADV_HUGEPAGE); /* THP where the host allows it; advice only */
    return p;
}

/* --- a snapshot's restore (setup.h's second block) ------------------------------------ */
int pyvmm_vcpu_restore(int fd, const struct pyvmm_vcpu_state *s, int *nmsrs, int *err)
{
    int n;

    *err = 0;
    *nmsrs = 0;
    STEP(PYVMM_STEP_SET_SREGS_STATE, ioctl(fd, KVM_SET_SREGS, s->sregs));
    STEP(PYVMM_STEP_SET_REGS_STATE, ioctl(fd, KVM_SET_REGS, s->regs));
    if (s->xsave)
        STEP(PYVMM_STEP_SET_XSAVE, ioctl(fd, KVM_SET_XSAVE, s->xsave));
    else
        STEP(PYVMM_STEP_SET_FPU_STATE, ioctl(fd, KVM_SET_FPU, s->fpu));
    if (s->xcrs)
        STEP(PYVMM_STEP_SET_XCRS, ioctl(fd, KVM_SET_XCRS, s->xcrs));
    if (s->debugregs)
        STEP(PYVMM_STEP_SET_DEBUGREGS, ioctl(fd, KVM_SET_DEBUGREGS, s->debugregs));
    if (s->lapic)
        STEP(PYVMM_STEP_SET_LAPIC_STATE, ioctl(fd, KVM_SET_LAPIC, s->lapic));
    STEP(PYVMM_STEP_SET_MSRS_STATE, n = ioctl(fd, KVM_SET_MSRS, s->msrs));
    *nmsrs = n;
    if ((uint32_t)n < s->msrs->nmsrs)
        return 0;
    STEP(PYVMM_STEP_SET_VCPU_EVENTS, ioctl(fd, KVM_SET_VCPU_EVENTS, s->events));
    STEP(PYVMM_STEP_SET_MP_STATE, ioctl(fd, KVM_SET_MP_STATE, s->mp_state));
    return 0;
}

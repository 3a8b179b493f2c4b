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
    if (r->fpu)
        STEP(PYVMM_STEP_SET_FPU, ioctl(fd, KVM_SET_FPU, r->fpu));
    if (r->lapic) {
        if (!r->lapic_known)
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

void *pyvmm_ram_map(uint64_t size, int advise, int *fd, int *err)
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
        *fd = PYVMM_RAM_NO_MEMFD;
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
    if (advise)
        madvise(p, size, MADV_HUGEPAGE); /* THP where the host allows it; advice only */
    return p;
}

/* a step of a sequence that makes something: on failure, *step and *err, and `undo` */
#define MAKE_STEP(n, call, undo)     \
    do {                             \
        if ((call) < 0) {            \
            *step = (n);             \
            *err = errno;            \
            undo;                    \
            return -1;               \
        }                            \
    } while (0)

int pyvmm_vm_create(int kvm_fd, const struct pyvmm_vm_spec *s, int *step, int *err)
{
    int vm;

    *step = 0;
    *err = 0;
    MAKE_STEP(PYVMM_STEP_CREATE_VM, vm = ioctl(kvm_fd, KVM_CREATE_VM, 0), (void)0);
    if (s->tss_addr)
        MAKE_STEP(PYVMM_STEP_SET_TSS_ADDR, ioctl(vm, KVM_SET_TSS_ADDR, (unsigned long)s->tss_addr),
                  close(vm));
    if (s->identity_map_addr) {
        uint64_t addr = s->identity_map_addr;
        MAKE_STEP(PYVMM_STEP_SET_IDENTITY_MAP_ADDR, ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &addr),
                  close(vm));
    }
    if (s->irqchip == PYVMM_IRQCHIP_KERNEL) {
        MAKE_STEP(PYVMM_STEP_CREATE_IRQCHIP, ioctl(vm, KVM_CREATE_IRQCHIP, 0), close(vm));
        if (s->pit) {
            struct kvm_pit_config pit = { .flags = s->pit_flags };
            MAKE_STEP(PYVMM_STEP_CREATE_PIT2, ioctl(vm, KVM_CREATE_PIT2, &pit), close(vm));
        }
    } else if (s->irqchip == PYVMM_IRQCHIP_SPLIT) {
        struct kvm_enable_cap cap = { .cap = KVM_CAP_SPLIT_IRQCHIP, .args = { s->split_pins } };
        MAKE_STEP(PYVMM_STEP_ENABLE_CAP, ioctl(vm, KVM_ENABLE_CAP, &cap), close(vm));
    }
    return vm;
}

void *pyvmm_ram_add(int vm_fd, uint32_t slot, uint64_t gpa, uint64_t size, uint32_t flags,
                    int advise, int *fd, int *step, int *err)
{
    struct kvm_userspace_memory_region r = { .slot = slot, .flags = flags,
                                             .guest_phys_addr = gpa, .memory_size = size };
    void *p;

    *step = 0;
    p = pyvmm_ram_map(size, advise, fd, err);
    if (!p) {
        *step = PYVMM_STEP_RAM;
        return NULL;
    }
    r.userspace_addr = (uint64_t)(uintptr_t)p;
    if (ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0) {
        *step = PYVMM_STEP_SET_USER_MEMORY_REGION;
        *err = errno;
        munmap(p, size);
        if (*fd >= 0)
            close(*fd);
        *fd = -1;
        return NULL;
    }
    return p;
}

int pyvmm_vcpu_create(int vm_fd, uint32_t id, uint32_t run_size, const struct pyvmm_reset *r,
                      void **run, int *step, int *err)
{
    int fd, failed;
    void *p;

    *step = 0;
    *err = 0;
    *run = NULL;
    MAKE_STEP(PYVMM_STEP_CREATE_VCPU, fd = ioctl(vm_fd, KVM_CREATE_VCPU, (unsigned long)id), (void)0);
    p = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    MAKE_STEP(PYVMM_STEP_MMAP_RUN, p == MAP_FAILED ? -1 : 0, close(fd));
    if (r && (failed = pyvmm_vcpu_reset(fd, r, err))) {
        *step = failed;
        munmap(p, run_size);
        close(fd);
        return -1;
    }
    *run = p;
    return fd;
}

/* What pyvmm_machine_create made of `m` before a failure (nram ranges, ncpus vCPUs), closed
 * in hardware.close's order: the vCPUs, the VM, then the RAM. */
static void machine_undo(const struct pyvmm_machine_spec *s, struct pyvmm_machine *m,
                         uint32_t nram, uint32_t ncpus)
{
    uint32_t i;

    for (i = 0; i < ncpus; i++) {
        munmap(m->run[i], s->run_size);
        close(m->vcpu_fd[i]);
    }
    close(m->vm_fd);
    for (i = 0; i < nram; i++) {
        munmap(m->ram[i], s->ram_size[i]);
        if (m->ram_fd[i] >= 0)
            close(m->ram_fd[i]);
    }
}

int pyvmm_machine_create(int kvm_fd, const struct pyvmm_machine_spec *s, struct pyvmm_machine *m)
{
    uint32_t i;

    m->step = m->err = 0;
    m->index = 0;
    if (s->nram > PYVMM_MACHINE_MAX_RAM || s->ncpus > PYVMM_MACHINE_MAX_CPUS) {
        m->step = PYVMM_STEP_MACHINE_SPEC;
        m->err = EINVAL;
        return -1;
    }
    m->vm_fd = pyvmm_vm_create(kvm_fd, &s->vm, &m->step, &m->err);
    if (m->vm_fd < 0)
        return -1;
    for (i = 0; i < s->nram; i++) {
        m->ram[i] = pyvmm_ram_add(m->vm_fd, i, s->ram_gpa[i], s->ram_size[i], 0, s->advise,
                                  &m->ram_fd[i], &m->step, &m->err);
        if (!m->ram[i]) {
            m->index = i;
            machine_undo(s, m, i, 0);
            return -1;
        }
    }
    for (i = 0; i < s->ncpus; i++) {
        m->vcpu_fd[i] = pyvmm_vcpu_create(m->vm_fd, i, s->run_size, s->reset[i], &m->run[i],
                                          &m->step, &m->err);
        if (m->vcpu_fd[i] < 0) {
            m->index = i;
            machine_undo(s, m, s->nram, i);
            return -1;
        }
        ((struct kvm_run *)m->run[i])->kvm_valid_regs = s->valid_regs;
    }
    return 0;
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

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
    /* lapic already holds what KVM_GET_LAPIC would read from this new vCPU (the page an
     * earlier vCPU of the same id and CPUID read): no KVM_GET_LAPIC */
    int lapic_known;
};

/* KVM_SET_CPUID2, KVM_SET_MSRS, KVM_SET_FPU (with r->fpu) and, with r->lapic,
 * KVM_GET_LAPIC (unless r->lapic_known), LINT0/1 written into the page, KVM_SET_LAPIC.
 * 0, or the PYVMM_STEP_ that failed (*err: errno). */
int pyvmm_vcpu_reset(int fd, const struct pyvmm_reset *r, int *err);

/* A vCPU's start: KVM_GET_SREGS, then the fields a CPU mode decides taken from `mode`
 * (CS, DS, ES, FS, GS, SS, GDT, IDT, CR0, CR3, CR4, EFER; the rest - TR, LDT, APIC base,
 * CR2, CR8 - stay as KVM has them), KVM_SET_SREGS, KVM_SET_REGS.  0 or the failed step. */
int pyvmm_vcpu_enter(int fd, const struct kvm_sregs *mode, const struct kvm_regs *regs, int *err);

/* `size` bytes of zeroed shared memory for guest RAM: a memfd (*fd) mapped MAP_SHARED |
 * MAP_NORESERVE, advised MADV_HUGEPAGE when `advise` (where the host's shmem THP heeds
 * it).  Where the host refuses a memfd of that size for any reason but ENOMEM (a
 * file-size limit, a seccomp policy), anonymous shared memory instead (*fd = -1).  NULL on failure, *err the errno: *fd is PYVMM_RAM_NO_MEMFD when the
 * memfd itself was out of memory, else -1 (the mmap failed). */
#define PYVMM_RAM_NO_MEMFD -2
void *pyvmm_ram_map(uint64_t size, int advise, int *fd, int *err);

/* The steps of the calls below that make KVM objects (numbered apart from the above). */
#define PYVMM_STEP_CREATE_VM 20
#define PYVMM_STEP_SET_TSS_ADDR 21
#define PYVMM_STEP_SET_IDENTITY_MAP_ADDR 22
#define PYVMM_STEP_CREATE_IRQCHIP 23
#define PYVMM_STEP_CREATE_PIT2 24
#define PYVMM_STEP_ENABLE_CAP 25
#define PYVMM_STEP_CREATE_VCPU 26
#define PYVMM_STEP_MMAP_RUN 27
#define PYVMM_STEP_SET_USER_MEMORY_REGION 28
#define PYVMM_STEP_RAM 29  /* pyvmm_ram_map failed: *fd says whether at the memfd */

#define PYVMM_IRQCHIP_NONE 0
#define PYVMM_IRQCHIP_KERNEL 1  /* KVM_CREATE_IRQCHIP (and, with pit, KVM_CREATE_PIT2) */
#define PYVMM_IRQCHIP_SPLIT 2   /* KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP, split_pins) */

/* What a VM needs before its first memslot and vCPU (pyvmm/hardware.py fills it). */
struct pyvmm_vm_spec {
    int irqchip;
    int pit;
    uint32_t pit_flags;
    uint32_t split_pins;
    uint64_t tss_addr;           /* 0: no KVM_SET_TSS_ADDR */
    uint64_t identity_map_addr;  /* 0: no KVM_SET_IDENTITY_MAP_ADDR */
};

/* KVM_CREATE_VM on the system fd, then the spec's KVM_SET_TSS_ADDR,
 * KVM_SET_IDENTITY_MAP_ADDR and interrupt controller.  The VM fd, or -1 with *step and
 * *err (the VM, if made, closed again). */
int pyvmm_vm_create(int kvm_fd, const struct pyvmm_vm_spec *s, int *step, int *err);

/* pyvmm_ram_map's RAM (*fd, the mapping returned) registered as memslot `slot` at `gpa`
 * with `flags`.  NULL with *step and *err on failure (the RAM, if made, released again). */
void *pyvmm_ram_add(int vm_fd, uint32_t slot, uint64_t gpa, uint64_t size, uint32_t flags,
                    int advise, int *fd, int *step, int *err);

/* KVM_CREATE_VCPU `id`, its kvm_run mapped (`run_size` bytes, *run) and, with `r`,
 * pyvmm_vcpu_reset.  The vCPU fd, or -1 with *step and *err (the vCPU, if made, closed). */
int pyvmm_vcpu_create(int vm_fd, uint32_t id, uint32_t run_size, const struct pyvmm_reset *r,
                      void **run, int *step, int *err);

/* A whole machine's KVM objects at once (pyvmm/hardware.py): KVM calls made back to back
 * run faster than the same calls with Python between them. */
#define PYVMM_MACHINE_MAX_RAM 2    /* below the MMIO hole, and above 4 GiB */
#define PYVMM_MACHINE_MAX_CPUS 64  /* pyvmm.config.MAX_CPUS */
#define PYVMM_STEP_MACHINE_SPEC 30 /* a spec with more RAM ranges or vCPUs than that: EINVAL */

struct pyvmm_machine_spec {
    struct pyvmm_vm_spec vm;
    uint32_t nram;  /* RAM range i: memslot i, fresh RAM (pyvmm_ram_add), no flags */
    uint64_t ram_gpa[PYVMM_MACHINE_MAX_RAM];
    uint64_t ram_size[PYVMM_MACHINE_MAX_RAM];
    int advise;     /* pyvmm_ram_map's */
    uint32_t ncpus; /* vCPU i: APIC ID i, reset with reset[i] (NULL: as KVM makes it) */
    uint32_t run_size;
    uint64_t valid_regs;  /* each kvm_run's kvm_valid_regs (KVM_CAP_SYNC_REGS) */
    const struct pyvmm_reset *reset[PYVMM_MACHINE_MAX_CPUS];
};

struct pyvmm_machine {
    int vm_fd;
    int ram_fd[PYVMM_MACHINE_MAX_RAM];  /* each range's memfd, -1 for anonymous memory */
    void *ram[PYVMM_MACHINE_MAX_RAM];
    int vcpu_fd[PYVMM_MACHINE_MAX_CPUS];
    void *run[PYVMM_MACHINE_MAX_CPUS];
    /* on failure: the step (a PYVMM_STEP_), its errno, and the RAM range or vCPU it was
     * for; at PYVMM_STEP_RAM, ram_fd[index] is pyvmm_ram_map's *fd */
    int step;
    int err;
    uint32_t index;
};

/* pyvmm_vm_create, pyvmm_ram_add for each RAM range, pyvmm_vcpu_create for each vCPU (with
 * valid_regs set in its kvm_run).  0, or -1 with m->step, m->err and m->index, and
 * everything made closed again. */
int pyvmm_machine_create(int kvm_fd, const struct pyvmm_machine_spec *s, struct pyvmm_machine *m);
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

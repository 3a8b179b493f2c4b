/*
 * raw_vmm.c - the reference: the least a C VMM must do, with no pyvmm code in it.
 *
 *   raw_vmm exits BIN LOAD ENTRY COUNT_ADDR COUNT      -> "ns_per_exit <x> exits <n>"
 *   raw_vmm lifecycle BIN LOAD ENTRY COUNT_ADDR ITERS  -> "ns_median <x>"
 *
 * RAW_IRQCHIP=kernel|split|none (default none) gives the VM the same interrupt controller
 * as pyvmm's --irqchip, created at the same point, so like is compared with like;
 * RAW_WARMUP=N runs N untimed lifecycles first.
 *
 * "exits" runs the pio_loop guest once and times its KVM_RUN loop; "lifecycle" times
 * create VM + vCPU + 64 MiB memslot + long-mode set-up + run to the first exit + close.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM (64ul << 20)
#define CHK(x) do { if ((long)(x) < 0) { perror(#x); exit(3); } } while (0)

static uint8_t *image;
static size_t image_len;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

struct vm { int kvm, vm, vcpu; uint8_t *mem; struct kvm_run *run; size_t run_size; };

/* RAW_SETUP=full: what any VMM that boots a real guest does besides the minimum: the
 * supported CPUID (asked once per process, as pyvmm caches it), 11 MSRs at their reset
 * values, the x87/SSE reset state, the LAPIC's LINT0/1.  (pyvmm's x86/reset.py does the
 * same less KVM_SET_FPU, which KVM's own reset makes needless, and, for a vCPU like one
 * before, KVM_GET_LAPIC.) */
static struct kvm_cpuid2 *supported;

static void firmware_setup(struct vm *v, int lapic)
{
	if (!supported) {
		supported = calloc(1, sizeof(*supported) + 256 * sizeof(struct kvm_cpuid_entry2));
		supported->nent = 256;
		CHK(ioctl(v->kvm, KVM_GET_SUPPORTED_CPUID, supported));
	}
	CHK(ioctl(v->vcpu, KVM_SET_CPUID2, supported));
	static const uint32_t msrs[] = { 0x174, 0x175, 0x176, 0x277, 0x1a0, 0xc0000081, 0xc0000082,
					 0xc0000083, 0xc0000084, 0xc0000102, 0x2ff };
	struct { struct kvm_msrs h; struct kvm_msr_entry e[11]; } m = { .h = { .nmsrs = 11 } };
	for (int i = 0; i < 11; i++)
		m.e[i].index = msrs[i];
	m.e[3].data = 0x0007040600070406ull; /* PAT */
	m.e[4].data = 1;                     /* MISC_ENABLE: fast strings */
	m.e[10].data = 0x806;                /* MTRR_DEF_TYPE: enabled, write-back */
	CHK(ioctl(v->vcpu, KVM_SET_MSRS, &m));
	struct kvm_fpu fpu = { .fcw = 0x37f, .mxcsr = 0x1f80 };
	CHK(ioctl(v->vcpu, KVM_SET_FPU, &fpu));
	if (lapic) {
		struct kvm_lapic_state l;
		CHK(ioctl(v->vcpu, KVM_GET_LAPIC, &l));
		*(uint32_t *)(l.regs + 0x350) = 0x700;
		*(uint32_t *)(l.regs + 0x360) = 0x400;
		CHK(ioctl(v->vcpu, KVM_SET_LAPIC, &l));
	}
}

static void vm_create(struct vm *v, uint64_t load, uint64_t entry, uint64_t count_addr, uint64_t count)
{
	v->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	CHK(v->kvm);
	v->vm = ioctl(v->kvm, KVM_CREATE_VM, 0);
	CHK(v->vm);
	const char *irq = getenv("RAW_IRQCHIP");
	if (irq && !strcmp(irq, "kernel"))
		CHK(ioctl(v->vm, KVM_CREATE_IRQCHIP, 0));
	if (irq && !strcmp(irq, "split")) {
		struct kvm_enable_cap cap = { .cap = KVM_CAP_SPLIT_IRQCHIP, .args = { 24 } };
		CHK(ioctl(v->vm, KVM_ENABLE_CAP, &cap));
	}
	v->mem = mmap(NULL, MEM, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (v->mem == MAP_FAILED) { perror("mmap"); exit(3); }
	struct kvm_userspace_memory_region r = { .slot = 0, .guest_phys_addr = 0, .memory_size = MEM,
						 .userspace_addr = (uint64_t)v->mem };
	CHK(ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &r));
	memcpy(v->mem + load, image, image_len);
	memcpy(v->mem + count_addr, &count, 8);
	uint64_t *pml4 = (uint64_t *)(v->mem + 0x1000), *pdpt = (uint64_t *)(v->mem + 0x2000);
	uint64_t *pd = (uint64_t *)(v->mem + 0x3000);
	pml4[0] = 0x2000 | 3;
	pdpt[0] = 0x3000 | 3;
	for (int i = 0; i < 512; i++)
		pd[i] = ((uint64_t)i << 21) | 0x83;
	uint64_t *gdt = (uint64_t *)(v->mem + 0x500);
	gdt[0] = 0; gdt[1] = 0x00AF9B000000FFFFull; gdt[2] = 0x00CF93000000FFFFull;
	v->vcpu = ioctl(v->vm, KVM_CREATE_VCPU, 0);
	CHK(v->vcpu);
	v->run_size = ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->vcpu, 0);
	if (v->run == MAP_FAILED) { perror("mmap run"); exit(3); }
	struct kvm_sregs s;
	CHK(ioctl(v->vcpu, KVM_GET_SREGS, &s));
	struct kvm_segment cs = { .base = 0, .limit = 0xffffffff, .selector = 8, .type = 11, .present = 1,
				  .s = 1, .l = 1, .g = 1 };
	struct kvm_segment ds = cs;
	ds.selector = 0x10; ds.type = 3; ds.l = 0; ds.db = 1;
	s.cs = cs; s.ds = s.es = s.fs = s.gs = s.ss = ds;
	s.gdt.base = 0x500; s.gdt.limit = 23;
	s.cr3 = 0x1000; s.cr4 = 0x620; s.cr0 = 0x80050033; s.efer = 0xd00;
	CHK(ioctl(v->vcpu, KVM_SET_SREGS, &s));
	struct kvm_regs regs = { .rip = entry, .rsp = 0x80000, .rflags = 2 };
	CHK(ioctl(v->vcpu, KVM_SET_REGS, &regs));
	if (getenv("RAW_SETUP") && !strcmp(getenv("RAW_SETUP"), "full"))
		firmware_setup(v, irq && (!strcmp(irq, "kernel") || !strcmp(irq, "split")));
}

static void vm_destroy(struct vm *v)
{
	munmap(v->run, v->run_size);
	close(v->vcpu);
	close(v->vm);
	munmap(v->mem, MEM);
	close(v->kvm);
}

/* run until the debug-exit write; returns the number of exits */
static uint64_t run_guest(struct vm *v, int first_only)
{
	uint64_t exits = 0;
	for (;;) {
		CHK(ioctl(v->vcpu, KVM_RUN, 0));
		exits++;
		if (v->run->exit_reason != KVM_EXIT_IO) {
			fprintf(stderr, "unexpected exit %u\n", v->run->exit_reason);
			exit(4);
		}
		if (first_only || v->run->io.port == 0xf4)
			return exits;
	}
}

static int cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	if (argc != 7) {
		fprintf(stderr, "usage: raw_vmm exits|lifecycle BIN LOAD ENTRY COUNT_ADDR N\n");
		return 2;
	}
	FILE *f = fopen(argv[2], "rb");
	if (!f) { perror(argv[2]); return 2; }
	image = malloc(1 << 20);
	image_len = fread(image, 1, 1 << 20, f);
	fclose(f);
	uint64_t load = strtoull(argv[3], 0, 0), entry = strtoull(argv[4], 0, 0);
	uint64_t count_addr = strtoull(argv[5], 0, 0), n = strtoull(argv[6], 0, 0);
	struct vm v;
	if (!strcmp(argv[1], "exits")) {
		vm_create(&v, load, entry, count_addr, n);
		uint64_t t0 = now_ns();
		uint64_t exits = run_guest(&v, 0);
		uint64_t dt = now_ns() - t0;
		vm_destroy(&v);
		printf("ns_per_exit %.1f exits %lu\n", (double)dt / exits, (unsigned long)exits);
		return 0;
	}
	uint64_t *t = calloc(n, sizeof *t);
	/* RAW_WARMUP untimed first cycles: a new process's first VMs are slower (cold
	 * caches, first faults), and pyvmm's side is measured warm (bench/run.py, row 2) */
	int warmup = getenv("RAW_WARMUP") ? atoi(getenv("RAW_WARMUP")) : 0;
	for (int i = 0; i < warmup; i++) {
		vm_create(&v, load, entry, count_addr, 0);
		run_guest(&v, 1);
		vm_destroy(&v);
	}
	for (uint64_t i = 0; i < n; i++) {
		uint64_t t0 = now_ns();
		vm_create(&v, load, entry, count_addr, 0);
		run_guest(&v, 1);
		vm_destroy(&v);
		t[i] = now_ns() - t0;
	}
	qsort(t, n, sizeof *t, cmp);
	printf("ns_median %lu\n", (unsigned long)t[n / 2]);
	return 0;
}

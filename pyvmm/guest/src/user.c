/* user.c - user mode (CPL3) for guest code: per-vCPU set-up, the U bit, system calls and
 * faults (user.h; the transitions themselves are in user_entry.S).
 *
 * Set-up happens at a vCPU's first user call, so guests that never make one pay nothing:
 * the runtime's GDT (boot selectors, user data and code in SYSCALL's order, a TSS per vCPU
 * whose RSP0 is the user call's kernel stack), SYSCALL (EFER.SCE, STAR, LSTAR, FMASK), GS
 * base = this vCPU's struct user_cpu, the IDT, what user vector code needs (CR0.MP/NE,
 * CR4.OSFXSR/OSXMMEXCPT/OSXSAVE, XCR0 from CPUID leaf 0xD: XGETBV fails at CPL0 on
 * kvm_pvm, XSETBV works) and the U bit on the guest image.  No IST stack for #DF: the IDT
 * is shared with vCPUs that never load a TSS, and RSP0 is always a good stack.
 */
#include <pyvmm/idt.h>
#include <pyvmm/pt.h>
#include <pyvmm/rt.h>
#include <pyvmm/ucall.h>
#include <pyvmm/user.h>

#include "internal.h"

#define MAX_CPUS 64
#define USER_STACK 16384 /* per vCPU, as the APs' kernel stacks: 1 MiB of bss for 64 */

#define MSR_EFER 0xC0000080u
#define MSR_STAR 0xC0000081u
#define MSR_LSTAR 0xC0000082u
#define MSR_FMASK 0xC0000084u
#define MSR_GS_BASE 0xC0000101u
#define EFER_SCE 1u
/* SYSCALL clears TF, DF, IF, IOPL, NT, AC: the runtime's entry runs with interrupts off */
#define FMASK_BITS 0x47700u

#define CR0_MP (1ul << 1)
#define CR0_EM (1ul << 2)
#define CR0_TS (1ul << 3)
#define CR0_NE (1ul << 5)
#define CR4_OSFXSR (1ul << 9)
#define CR4_OSXMMEXCPT (1ul << 10)
#define CR4_OSXSAVE (1ul << 18)
/* XCR0 components a user thread can use: x87, SSE, AVX, AVX-512 (opmask, ZMM_Hi256, Hi16_ZMM) */
#define XCR0_USER 0xE7ul

long guest_user_enter(long (*fn)(long), long arg, long first);
__attribute__((noreturn)) void guest_user_unwind(long result);
extern char guest_syscall_entry[], __image_start[], __image_end[];
long guest_syscall_dispatch(long a, long b, long c, long nr);

static struct user_cpu cpus[MAX_CPUS];
static uint8_t user_stacks[MAX_CPUS][USER_STACK] __attribute__((aligned(4096)));
static uint32_t ncpus;
static uint64_t gdt[6 + 2 * MAX_CPUS] = {
	0,
	0x00AF9B000000FFFFul, /* 0x08 kernel code64 */
	0x00CF93000000FFFFul, /* 0x10 kernel data */
	0x00CF9B000000FFFFul, /* 0x18 code32 (the boot GDT's; SYSRET's 32-bit CS) */
	0x00CFF3000000FFFFul, /* 0x20 user data, DPL 3 */
	0x00AFFB000000FFFFul, /* 0x28 user code64, DPL 3 */
};

static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
	__asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static inline uint64_t read_cr0(void) { uint64_t v; __asm__ volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static inline void write_cr0(uint64_t v) { __asm__ volatile("mov %0, %%cr0" :: "r"(v) : "memory"); }
static inline uint64_t read_cr4(void) { uint64_t v; __asm__ volatile("mov %%cr4, %0" : "=r"(v)); return v; }
static inline void write_cr4(uint64_t v) { __asm__ volatile("mov %0, %%cr4" :: "r"(v) : "memory"); }

static void setup_vectors(void)
{
	uint32_t r[4];
	cpuid(1, 0, r);
	uint64_t cr0 = (read_cr0() | CR0_MP | CR0_NE) & ~(CR0_EM | CR0_TS);
	write_cr0(cr0);
	uint64_t cr4 = read_cr4();
	if (r[3] & (1u << 24)) /* FXSR */
		cr4 |= CR4_OSFXSR | CR4_OSXMMEXCPT;
	int xsave = (r[2] >> 26) & 1;
	if (xsave)
		cr4 |= CR4_OSXSAVE;
	write_cr4(cr4);
	if (xsave) {
		cpuid(0xD, 0, r);
		uint64_t xcr0 = (((uint64_t)r[3] << 32) | r[0]) & XCR0_USER;
		if ((xcr0 & 0xE0) != 0xE0) /* AVX-512's three components go together */
			xcr0 &= ~0xE0ul;
		if (!(xcr0 & 2)) /* AVX needs SSE */
			xcr0 &= ~0xE6ul;
		__asm__ volatile("xsetbv" :: "c"(0), "a"((uint32_t)xcr0), "d"((uint32_t)(xcr0 >> 32)));
	}
}

/* after set-up (GS base is this vCPU's struct user_cpu; the runtime owns GS base) */
static struct user_cpu *this_cpu(void)
{
	struct user_cpu *c;
	__asm__ volatile("mov %%gs:0, %0" : "=r"(c));
	return c;
}

static struct user_cpu *setup_cpu(void)
{
	uint32_t slot = __atomic_fetch_add(&ncpus, 1, __ATOMIC_SEQ_CST);
	if (slot >= MAX_CPUS) {
		printf("user mode: more than %u vCPUs\n", MAX_CPUS);
		exit(0x7c);
	}
	struct user_cpu *c = &cpus[slot];
	c->self = c;
	c->user_stack = (uint64_t)user_stacks[slot] + USER_STACK;
	c->tss.iomap_base = sizeof(struct tss64); /* no I/O bitmap: ports #GP at CPL3 */
	uint64_t base = (uint64_t)&c->tss, limit = sizeof(struct tss64) - 1;
	gdt[6 + 2 * slot] = (limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | 0x89ul << 40 |
			    (base >> 24 & 0xFF) << 56;
	gdt[7 + 2 * slot] = base >> 32;
	struct __attribute__((packed)) { uint16_t limit; uint64_t base; } gdtr = {
		sizeof(gdt) - 1, (uint64_t)gdt };
	__asm__ volatile("lgdt %0" :: "m"(gdtr) : "memory");
	__asm__ volatile("ltr %w0" :: "r"((uint16_t)(SEL_TSS0 + 16 * slot)) : "memory");
	wrmsr(MSR_GS_BASE, (uint64_t)c);
	wrmsr(MSR_STAR, (uint64_t)0x18 << 48 | (uint64_t)SEL_KERNEL_CS << 32);
	wrmsr(MSR_LSTAR, (uint64_t)guest_syscall_entry);
	wrmsr(MSR_FMASK, FMASK_BITS);
	wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_SCE);
	idt_ensure_loaded();
	setup_vectors();
	/* the image: its code, data and bss (the user stacks are in it) */
	guest_user_map(__image_start, (size_t)(__image_end - __image_start));
	return c;
}

/* set up on this vCPU when GS base does not point into cpus[] (one RDMSR: reading %gs:0
 * before set-up would read address 0, which a guest may leave unmapped).  Only setup_cpu
 * points it there, so no alignment check: each CPL0 instruction costs ~1 us on kvm_pvm. */
static struct user_cpu *current_cpu(void)
{
	uint64_t gs = rdmsr(MSR_GS_BASE);
	if (gs - (uint64_t)cpus < sizeof(cpus))
		return (struct user_cpu *)gs;
	return setup_cpu();
}

static long user_call(long (*fn)(long), long arg, struct guest_fault *fault)
{
	struct user_cpu *c = current_cpu();
	c->fault = fault;
	long first = !c->fpu_ready;
	c->fpu_ready = 1;
	long r = guest_user_enter(fn, arg, first);
	c->fault = 0;
	return r;
}

long GUEST_USER_CALL(long (*fn)(long), long arg) { return user_call(fn, arg, 0); }

long GUEST_USER_TRY_CALL(long (*fn)(long), long arg, struct guest_fault *fault)
{
	fault->faulted = 0;
	return user_call(fn, arg, fault);
}

void guest_user_map(const void *addr, size_t len)
{
	uint64_t *pml4 = (uint64_t *)(read_cr3() & PTE_ADDR);
	uint64_t va = (uint64_t)addr & ~0xFFFul, end = (uint64_t)addr + len;
	while (va < end) {
		uint64_t *t = pml4;
		int shift = 39;
		for (;;) {
			uint64_t *e = &t[(va >> shift) & 511];
			if (!(*e & PTE_P))
				break; /* not mapped: a user access faults, and is reported */
			*e |= PTE_US;
			if (shift == 12 || (*e & PTE_PS))
				break;
			t = (uint64_t *)(*e & PTE_ADDR);
			shift -= 9;
		}
		va = (va | ((1ul << shift) - 1)) + 1; /* the next page at the level reached */
		if (!va)
			break;
	}
}

/* CPL0, on the user call's kernel stack, interrupts off; the arguments are user values
 * but user code is the guest's own (no isolation): pointers are used as given. */
long guest_syscall_dispatch(long a, long b, long c, long nr)
{
	switch (nr) {
	case GUEST_SYS_UCALL:
		ucall((struct ucall *)a);
		return 0;
	case GUEST_SYS_WRITE: {
		const char *s = (const char *)a;
		rt_print_lock();
		for (long i = 0; i < b; i++)
			putc(s[i]);
		if (c)
			putc('\n');
		rt_print_unlock();
		return b;
	}
	case GUEST_SYS_EXIT:
		exit((uint32_t)a);
	case GUEST_SYS_NOP:
		return a;
	default:
		return -1;
	}
}

void user_fault(struct ex_regs *r)
{
	struct guest_fault *f = this_cpu()->fault;
	if (!f)
		idt_report_unhandled(r);
	f->vector = r->vector;
	f->error_code = r->error_code;
	f->cr2 = read_cr2();
	f->rip = r->rip;
	f->faulted = 1;
	guest_user_unwind(-1);
}

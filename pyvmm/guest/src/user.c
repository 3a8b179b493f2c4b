/* user.c - user mode (CPL3) for guest code: per-vCPU set-up, the U bit, system calls and
 * faults (user.h; the transitions themselves are in user_entry.S).
 *
 * Set-up happens at a vCPU's first user call, so guests that never make one pay nothing:
 * the runtime's GDT (boot selectors, user data and code in SYSCALL's order, a TSS per vCPU
 * whose RSP0 is the vCPU's event stack and whose I/O bitmap lets user code reach the
 * runtime's ports), SYSCALL (EFER.SCE, STAR, LSTAR, FMASK), GS base = this vCPU's struct
 * user_cpu with the two IRETQ frames into user mode, the IDT, what user vector code needs
 * (CR0.MP/NE, CR4.OSFXSR/OSXMMEXCPT/OSXSAVE, XCR0 from CPUID leaf 0xD: XGETBV fails at
 * CPL0 on kvm_pvm, XSETBV works) and the U bit on the guest image.  The first set-up also
 * probes whether user code may do that port I/O itself (guest_user_io).  No IST stack for
 * #DF: the IDT is shared with vCPUs that never load a TSS, and RSP0 is always a good stack.
 */
#include <pyvmm/idt.h>
#include <pyvmm/pt.h>
#include <pyvmm/rt.h>
#include <pyvmm/ucall.h>
#include <pyvmm/user.h>

#include "internal.h"

#define USER_STACK (1 << USER_STACK_SHIFT) /* per vCPU, as the APs' kernel stacks: 1 MiB of bss for 64 */
#define EVENT_STACK 8192 /* per vCPU: TSS.RSP0, where events from CPL3 and system calls run */

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

__attribute__((noreturn)) void guest_user_unwind(long result);
extern char guest_syscall_entry[], guest_user_start_first[], guest_user_start_try_first[],
	__image_start[], __image_end[];
long guest_syscall_dispatch(long a, long b, long c, long nr);
void guest_user_setup(void);

/* not static: the user-mode trampoline finds its vCPU's block from its stack pointer */
struct user_cpu guest_user_cpus[MAX_CPUS];
uint8_t guest_user_stacks[MAX_CPUS][USER_STACK] __attribute__((aligned(4096)));
static uint8_t event_stacks[MAX_CPUS][EVENT_STACK] __attribute__((aligned(16)));
static uint32_t ncpus;
volatile uint32_t guest_user_io;

_Static_assert(GUEST_SYS_NOP == SYS_NOP, "user_entry.S's system call table");
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

/* the runtime's ports, open to user code in the TSS's I/O bitmap (internal.h) */
static void allow_ports(struct tss64 *t, uint32_t port, uint32_t n)
{
	for (uint32_t p = port; p < port + n; p++)
		t->iomap[p / 8] &= (uint8_t)~(1u << (p % 8));
}

static void setup_cpu(void)
{
	uint32_t slot = __atomic_fetch_add(&ncpus, 1, __ATOMIC_SEQ_CST);
	if (slot >= MAX_CPUS) {
		printf("user mode: more than %u vCPUs\n", MAX_CPUS);
		exit(0x7c);
	}
	struct user_cpu *c = &guest_user_cpus[slot];
	c->self = c;
	uint64_t user_stack = (uint64_t)guest_user_stacks[slot] + USER_STACK;
	for (int i = 0; i < 2; i++) { /* RFLAGS: the caller's, stored by each call */
		uint64_t rip = (uint64_t)(i ? guest_user_start_try_first : guest_user_start_first);
		c->frame[i] = (struct iret_frame){ rip, SEL_USER_CS, 2, user_stack, SEL_USER_DS };
		c->frame_ptr[i] = &c->frame[i];
	}
	c->tss.rsp[0] = (uint64_t)event_stacks[slot] + EVENT_STACK;
	c->tss.iomap_base = __builtin_offsetof(struct tss64, iomap);
	memset(c->tss.iomap, 0xff, sizeof(c->tss.iomap));
	allow_ports(&c->tss, PORT_DEBUG_EXIT, 4);
	allow_ports(&c->tss, PORT_COM1, 8);
	allow_ports(&c->tss, UCALL_PORT, 4);
	uint64_t base = (uint64_t)&c->tss, limit = sizeof(struct tss64) - 1;
	gdt[6 + 2 * slot] = (limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | 0x89ul << 40 |
			    (base >> 24 & 0xFF) << 56;
	gdt[7 + 2 * slot] = base >> 32;
	struct __attribute__((packed)) { uint16_t limit; uint64_t base; } gdtr = {
		sizeof(gdt) - 1, (uint64_t)gdt };
	__asm__ volatile("lgdt %0" :: "m"(gdtr) : "memory");
	wrmsr(MSR_GS_BASE, (uint64_t)c);
	wrmsr(MSR_STAR, (uint64_t)0x18 << 48 | (uint64_t)SEL_KERNEL_CS << 32);
	wrmsr(MSR_LSTAR, (uint64_t)guest_syscall_entry);
	wrmsr(MSR_FMASK, FMASK_BITS);
	wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_SCE);
	idt_ensure_loaded();
	setup_vectors();
	/* the image: its code, data and bss (the user stacks and blocks are in it) */
	guest_user_map(__image_start, (size_t)(__image_end - __image_start));
	/* last: one of the runtime's TSSs in TR is what tells GUEST_USER_CALL it is set up */
	__asm__ volatile("ltr %w0" :: "r"((uint16_t)(SEL_TSS0 + 16 * slot)) : "memory");
}

/* CPL3: a port read the I/O bitmap allows (COM1's line status: no side effect) */
static long io_probe(long unused)
{
	(void)unused;
	return inb(PORT_COM1 + 5);
}

/* GUEST_USER_CALL's first call on a vCPU (user_entry.S).  The first set-up also finds out
 * whether user code may use the runtime's ports itself: hardware and QEMU apply the TSS's
 * I/O bitmap at CPL3 (and so does kvm_pvm: its emulator checks it); a host that does not
 * raises #GP, and user code goes on through system calls there.  One probe per machine:
 * every vCPU runs on the same host. */
void guest_user_setup(void)
{
	static volatile uint32_t probed;
	setup_cpu();
	if (__atomic_exchange_n(&probed, 1, __ATOMIC_SEQ_CST))
		return;
	struct guest_fault f;
	GUEST_USER_TRY_CALL(io_probe, 0, &f);
	guest_user_io = !f.faulted;
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

/* CPL0, on the vCPU's event stack, interrupts off (the calls user_entry.S does not make
 * itself); the arguments are user values
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

/* an exception at CPL3 (idt.c): c->fault is the trampoline's copy of the call's pointer */
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

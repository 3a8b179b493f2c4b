/* usermode - user mode (CPL3) in the guest SDK (tests/integration/test_usermode.py,
 * bench/usermode.py).  Vector code is in usermode_user.c, built with --user-src.
 *
 *   call [sys]    GUEST_USER_CALL: result back at CPL0; GUEST_SYNC, GUEST_PRINTF, printf
 *                 and puts from user code (sys: through system calls, not their own OUTs)
 *   fault KIND    a fault in user code with no TRY: pf, gp, ud, de, wp (write to a
 *                 read-only user page): reported as an unhandled exception at CPL3
 *   try           each fault again through GUEST_USER_TRY_CALL, then a user call that works
 *   assert        GUEST_ASSERT_EQ failing in user code
 *   exit N        exit(N) from user code;  done: GUEST_DONE from user code
 *   vec SEED      SSE2 (and AVX2 where CPUID has it) sums in user code, for the host to check
 *   smp           every AP makes a user call too
 *   irq           LAPIC timer interrupts while user code spins, called with IF set; the
 *                 caller's IF comes back as it was, clear or set
 *   speed N M     bench: N loop iterations at CPL3 and N/1000 at CPL0; M user calls, M
 *                 system calls, M GUEST_SYNCs from CPL3 and from CPL0; cycles (guest TSC) in
 *                 GUEST_SYNC 40, 41 and 43, GUEST_SYNC 42 between the parts
 *   floor N       bench: the host's own transition costs (below), N round trips each
 */
#include <pyvmm/guest.h>

long vec_fill(long seed);
long vec_sse2(long unused);
long vec_avx2(long unused);
long vec_double(long n);

static long add_one(long x) { return x + 1; }

static long talk(long x)
{
	GUEST_SYNC(2, guest_cpl(), x);
	GUEST_PRINTF("user printf %ld", x);
	printf("user console %ld\n", x);
	puts("user puts");
	return x * 2;
}

/* far from anything the loader maps: PML4 slots 8 and 9 */
#define RO_VA 0x40000000000ul     /* ro_page again, user-readable, not writable */
#define UNMAPPED_VA 0x48000000000ul
static uint8_t ro_page[4096] __attribute__((aligned(4096)));
static volatile long zero;

static long do_fault(long kind)
{
	switch (kind) {
	case 0: /* #PF: not present */
		return *(volatile long *)UNMAPPED_VA;
	case 1: /* #GP: a port at CPL3 without IOPL */
		outb(0x80, 1);
		return 0;
	case 2: /* #UD */
		__asm__ volatile("ud2");
		return 0;
	case 3: { /* #DE (asm: C's division by zero is undefined, gcc may trap it with ud2) */
		long q = 1, d = zero, hi = 0;
		__asm__ volatile("divq %2" : "+a"(q), "+d"(hi) : "r"(d));
		return q;
	}
	case 4: /* #PF: write to a read-only page */
		*(volatile uint8_t *)(RO_VA + 8) = 1;
		return 0;
	}
	return -1;
}

static long user_assert(long x)
{
	GUEST_ASSERT_EQ(x, 5);
	return 0;
}

static long user_exit(long code) { exit((uint32_t)code); }
static long user_done(long x) { (void)x; GUEST_DONE(); }

static long spin(long n)
{
	uint64_t t0 = rdtsc();
	__asm__ volatile("1: dec %0; jnz 1b" : "+r"(n));
	return (long)(rdtsc() - t0);
}

static long nop(long x) { return x; }

static long syscalls(long n)
{
	uint64_t t0 = rdtsc();
	for (long i = 0; i < n; i++)
		GUEST_ASSERT_EQ(guest_syscall(GUEST_SYS_NOP, i, 0, 0), i);
	return (long)(rdtsc() - t0);
}

/* ---- floor: what this host's transitions cost with (almost) none of the runtime around
 * them (bench/usermode.py).  Each loop swaps its own gates into the runtime's IDT and its
 * own stack into TSS.RSP0 for the duration, then puts them back; user code runs on
 * fl_ustack from a hand-made IRETQ frame.  Per round trip, at CPL0:
 *   fl_bare    mov rsp; IRETQ -> CPL3: ud2 -> #UD -> dec; jnz: the cheapest call shape,
 *              3 emulated instructions + IRETQ + one event delivery
 *   fl_resume  a CPL3 loop of ud2 whose #UD gate is addq $2,(%rsp); IRETQ: 1 + IRETQ + one
 *              delivery, timed at CPL3 (RDTSC is native there)
 *   fl_split   the same with RDTSC first in the gate: CPL3 RDTSC -> gate RDTSC is the
 *              delivery, gate RDTSC -> CPL3 RDTSC the rest (RDTSC's tail, addq, IRETQ)
 *   fl_iret0   mov rsp; IRETQ to CPL0; dec; jnz: IRETQ as one emulated instruction
 * The CPL3 loops end with a #DE (div by zero) whose gate is fl_exit_gate; fl_io_user is an
 * OUT to the ucall port with IOPL 3 in the frame (no I/O bitmap: the runtime's TSS then
 * had none), the probe behind docs/guests.md's "IOPL 3 does not open ports here". */
struct iret_frame { uint64_t rip, cs, rflags, rsp, ss; };
static uint8_t fl_ustack[4096] __attribute__((aligned(16)));
static uint8_t fl_kstack[4096] __attribute__((aligned(16)));
uint64_t fl_saved_rsp, fl_out[2];
extern char fl_bare_gate[], fl_ud_stub[], fl_resume_user[], fl_resume_gate[], fl_split_user[],
	fl_split_gate[], fl_exit_gate[], fl_gp_gate[], fl_iret0_next[], fl_io_user[];
long fl_bare_run(long n, struct iret_frame *f);
long fl_user_run(long n, struct iret_frame *f);
long fl_iret0_run(long n, struct iret_frame *f);

__asm__(
	".text\n"
	".macro FL_SAVE\n push %rbx\n push %rbp\n push %r12\n push %r13\n push %r14\n push %r15\n"
	" mov %rsp, fl_saved_rsp(%rip)\n .endm\n"
	".macro FL_TSC reg\n rdtsc\n shl $32, %rdx\n or %rdx, %rax\n mov %rax, \\reg\n .endm\n"
	"fl_bare_run:\n FL_SAVE\n FL_TSC %r12\n"
	"1: mov %rsi, %rsp\n iretq\n"
	"fl_bare_gate:\n dec %rdi\n jnz 1b\n"
	" FL_TSC %rax\n sub %r12, %rax\n jmp fl_restore\n"
	"fl_ud_stub:\n ud2\n"
	/* the CPL3 loops: RDI iterations, cycles in RAX (and RDX), then #DE to fl_exit_gate */
	"fl_user_run:\n FL_SAVE\n mov %rsi, %rsp\n iretq\n"
	"fl_resume_user:\n FL_TSC %r12\n"
	"1: ud2\n dec %rdi\n jnz 1b\n"
	" FL_TSC %rax\n sub %r12, %rax\n xor %ecx, %ecx\n div %ecx\n"
	"fl_resume_gate:\n addq $2, (%rsp)\n iretq\n"
	"fl_split_user:\n xor %r13d, %r13d\n xor %r14d, %r14d\n"
	"1: rdtsc\n mov %eax, %ebx\n ud2\n mov %eax, %ecx\n rdtsc\n"
	" sub %ecx, %eax\n add %rax, %r14\n sub %ebx, %ecx\n add %rcx, %r13\n dec %rdi\n jnz 1b\n"
	" mov %r13, %rax\n mov %r14, %rdx\n xor %ecx, %ecx\n div %ecx\n"
	"fl_split_gate:\n rdtsc\n addq $2, (%rsp)\n iretq\n"
	"fl_io_user:\n mov $0x1000, %edx\n out %al, %dx\n mov $1, %eax\n xor %ecx, %ecx\n div %ecx\n"
	"fl_gp_gate:\n movq $13, %rax\n jmp fl_restore\n"
	"fl_exit_gate:\n mov %rdx, fl_out(%rip)\n"
	"fl_restore:\n mov fl_saved_rsp(%rip), %rsp\n pop %r15\n pop %r14\n pop %r13\n pop %r12\n"
	" pop %rbp\n pop %rbx\n ret\n"
	"fl_iret0_run:\n FL_SAVE\n FL_TSC %r12\n"
	"1: mov %rsi, %rsp\n iretq\n"
	"fl_iret0_next:\n dec %rdi\n jnz 1b\n"
	" FL_TSC %rax\n sub %r12, %rax\n jmp fl_restore\n");

struct fl_gate { uint16_t off0, sel; uint8_t ist, type; uint16_t off1; uint32_t off2, zero; };

static struct fl_gate *fl_idt(void)
{
	struct __attribute__((packed)) { uint16_t limit; uint64_t base; } r;
	__asm__ volatile("sidt %0" : "=m"(r));
	return (struct fl_gate *)r.base;
}

static void fl_set_gate(int v, void *to)
{
	uint64_t a = (uint64_t)to;
	fl_idt()[v] = (struct fl_gate){ (uint16_t)a, 0x08, 0, 0x8E, (uint16_t)(a >> 16),
					(uint32_t)(a >> 32), 0 };
}

/* this vCPU's TSS.RSP0 (after its first user call TR is the runtime's TSS) */
static uint64_t *fl_rsp0(void)
{
	struct __attribute__((packed)) { uint16_t limit; uint64_t base; } g;
	uint16_t tr;
	__asm__ volatile("sgdt %0; str %1" : "=m"(g), "=r"(tr));
	uint64_t *d = (uint64_t *)(g.base + (tr & ~7u));
	return (uint64_t *)((d[0] >> 16 & 0xFFFFFF) + (d[0] >> 56 << 24) + (d[1] << 32) + 4);
}

/* a frame into user mode with the runtime's selectors (user data 0x23, code 0x2b) */
static struct iret_frame fl_user(void *rip, uint64_t rflags)
{
	return (struct iret_frame){ (uint64_t)rip, 0x2b, rflags,
				    (uint64_t)fl_ustack + sizeof(fl_ustack), 0x23 };
}

/* GUEST_SYNC 60 between the loops (the host counts emulated instructions there), then 61
 * with the cycles of each loop, 62 with what the OUT at IOPL 3 raised (0 if none) and 64
 * with a user call made after everything is put back */
static void floor_mode(long n)
{
	struct ucall uc = { .cmd = UCALL_SYNC, .nargs = 1, .args = { 63 } };
	GUEST_USER_CALL(nop, 0); /* the runtime's set-up: GDT, TSS, the U bit */
	struct fl_gate saved[14];
	memcpy(saved, fl_idt(), sizeof(saved));
	uint64_t *rsp0 = fl_rsp0(), saved_rsp0 = *rsp0;
	*rsp0 = (uint64_t)fl_kstack + sizeof(fl_kstack);
	fl_set_gate(0, fl_exit_gate);
	fl_set_gate(13, fl_gp_gate);
	struct iret_frame f = fl_user(fl_ud_stub, 2);
	fl_set_gate(6, fl_bare_gate);
	GUEST_SYNC(60, 0);
	long bare = fl_bare_run(n, &f);
	GUEST_SYNC(60, 1);
	fl_set_gate(6, fl_resume_gate);
	f = fl_user(fl_resume_user, 2);
	long resume = fl_user_run(n, &f);
	GUEST_SYNC(60, 2);
	fl_set_gate(6, fl_split_gate);
	f = fl_user(fl_split_user, 2);
	long deliver = fl_user_run(n, &f), back = (long)fl_out[0];
	struct iret_frame k = { (uint64_t)fl_iret0_next, 0x08, 2, (uint64_t)fl_kstack + 2048, 0x10 };
	GUEST_SYNC(60, 3);
	long iret0 = fl_iret0_run(n, &k);
	GUEST_SYNC(60, 4);
	GUEST_SYNC(60, 5);
	GUEST_SYNC(61, bare, resume, deliver, back, iret0);
	/* an OUT at CPL3 with IOPL 3 and no I/O bitmap: vector 13 if it raised #GP */
	uint16_t iomap = *(uint16_t *)((uint64_t)rsp0 - 4 + 102);
	*(uint16_t *)((uint64_t)rsp0 - 4 + 102) = 0xffff;
	f = fl_user(fl_io_user, 0x3002);
	long io = fl_user_run((long)&uc, &f);
	*(uint16_t *)((uint64_t)rsp0 - 4 + 102) = iomap;
	GUEST_SYNC(62, io == 13 ? 13 : 0);
	*rsp0 = saved_rsp0;
	memcpy(fl_idt(), saved, sizeof(saved));
	GUEST_SYNC(64, GUEST_USER_CALL(add_one, 1)); /* the runtime's state is back */
}

/* irq: LAPIC timer interrupts taken while user code runs */
#define IRQ_VEC 0x40
static volatile long ticks;

static void tick(struct ex_regs *r)
{
	(void)r;
	ticks++;
	apic_eoi();
}

/* CPL3: spin until n ticks have come (bounded: about 10 s of TSC at up to 5 GHz) */
static long wait_ticks(long n)
{
	uint64_t t0 = rdtsc();
	while (ticks < n && rdtsc() - t0 < 50000000000ul)
		;
	return ticks;
}

static uint64_t rflags_if(void)
{
	uint64_t f;
	__asm__ volatile("pushfq; pop %0" : "=r"(f));
	return (f >> 9) & 1;
}

static void irq_mode(void)
{
	GUEST_USER_CALL(add_one, 0);
	GUEST_SYNC(70, rflags_if()); /* IF clear after a call made with IF clear */
	idt_set_handler(IRQ_VEC, tick);
	apic_enable(0);
	apic_write(APIC_TDCR, 0xB);
	apic_write(APIC_LVTT, IRQ_VEC | LVTT_PERIODIC);
	apic_write(APIC_TMICT, 1000000); /* 1 ms */
	__asm__ volatile("sti");
	long got = GUEST_USER_CALL(wait_ticks, 3);
	uint64_t on = rflags_if();
	struct guest_fault f; /* the fault path gives IF back too */
	GUEST_USER_TRY_CALL(do_fault, 2, &f);
	uint64_t on_after_fault = rflags_if();
	__asm__ volatile("cli");
	apic_write(APIC_TMICT, 0);
	GUEST_SYNC(71, got >= 3, on, f.faulted, on_after_fault);
}

static long user_syncs(long n)
{
	uint64_t t0 = rdtsc();
	for (long i = 0; i < n; i++)
		GUEST_SYNC(44, i);
	return (long)(rdtsc() - t0);
}

static const char *fault_kinds[] = { "pf", "gp", "ud", "de", "wp" };

void ap_main(uint32_t index)
{
	long r = GUEST_USER_CALL(add_one, 100 + index);
	GUEST_SYNC(50 + index + 1, r, guest_cpl());
	__atomic_add_fetch(&ap_started, 1, __ATOMIC_SEQ_CST);
	for (;;)
		__asm__ volatile("cli; hlt");
}

static int has_avx2(void)
{
	uint32_t a, b, c, d;
	__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
	if (!((c >> 28) & 1) || !((c >> 27) & 1)) /* AVX, OSXSAVE (set by the first user call) */
		return 0;
	__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
	return (b >> 5) & 1;
}

int main(struct boot_info *bi, const char *cmdline)
{
	const char *arg = skip_word(cmdline);
	/* for "wp": a present user page that is not writable (pt_map's new tables are
	 * P|RW; guest_user_map adds U along the path) */
	pt_map((uint64_t *)(read_cr3() & PTE_ADDR), RO_VA, (uint64_t)ro_page, PTE_US);
	guest_user_map((void *)RO_VA, 4096);
	if (!strncmp(cmdline, "call", 4)) {
		long r = GUEST_USER_CALL(add_one, 41);
		if (!strcmp(arg, "sys")) /* as on a host that ignores the I/O bitmap */
			guest_user_io = 0;
		GUEST_SYNC(1, r, guest_cpl());
		r = GUEST_USER_CALL(talk, 21);
		GUEST_SYNC(3, r);
		GUEST_DONE();
	}
	if (!strncmp(cmdline, "fault", 5)) {
		for (long k = 0; k < 5; k++)
			if (!strcmp(arg, fault_kinds[k]))
				GUEST_USER_CALL(do_fault, k);
		return 3;
	}
	if (!strcmp(cmdline, "try")) {
		for (long k = 0; k < 5; k++) {
			struct guest_fault f;
			long r = GUEST_USER_TRY_CALL(do_fault, k, &f);
			GUEST_SYNC(10 + k, r, f.faulted, f.vector, f.error_code, f.cr2);
		}
		struct guest_fault f;
		long r = GUEST_USER_TRY_CALL(add_one, 7, &f);
		GUEST_SYNC(20, r, f.faulted);
		GUEST_DONE();
	}
	if (!strcmp(cmdline, "assert"))
		GUEST_USER_CALL(user_assert, 4);
	if (!strncmp(cmdline, "exit", 4))
		GUEST_USER_CALL(user_exit, (long)parse_u64(arg));
	if (!strcmp(cmdline, "done"))
		GUEST_USER_CALL(user_done, 0);
	if (!strncmp(cmdline, "vec", 3)) {
		GUEST_USER_CALL(vec_fill, (long)parse_u64(arg));
		long sse = GUEST_USER_CALL(vec_sse2, 0);
		int avx2 = has_avx2();
		long avx = avx2 ? GUEST_USER_CALL(vec_avx2, 0) : -1;
		long dbl = GUEST_USER_CALL(vec_double, 1000);
		GUEST_SYNC(30, sse, avx2, avx, dbl);
		GUEST_DONE();
	}
	if (!strcmp(cmdline, "smp")) {
		unsigned n = smp_start_aps(bi->ncpus - 1);
		GUEST_SYNC(50, GUEST_USER_CALL(add_one, 99), n);
		GUEST_DONE();
	}
	if (!strncmp(cmdline, "speed", 5)) {
		long n = (long)parse_u64(arg), m = (long)parse_u64(skip_word(arg));
		GUEST_USER_CALL(nop, 0); /* set-up out of the figures */
		long c3 = GUEST_USER_CALL(spin, n);
		long c0 = spin(n / 1000 ? n / 1000 : 1);
		GUEST_SYNC(40, c3, n, c0, n / 1000 ? n / 1000 : 1);
		/* the host reads KVM's insn_emulation at each GUEST_SYNC 42: CPL0 instructions
		 * per call (the last pair: what the syncs themselves add) */
		GUEST_SYNC(42, 0);
		uint64_t t0 = rdtsc();
		for (long i = 0; i < m; i++)
			GUEST_USER_CALL(nop, i);
		long calls = (long)(rdtsc() - t0);
		GUEST_SYNC(42, 1);
		long sys = GUEST_USER_CALL(syscalls, m);
		GUEST_SYNC(42, 2);
		long syncs3 = GUEST_USER_CALL(user_syncs, m);
		GUEST_SYNC(42, 3);
		t0 = rdtsc();
		for (long i = 0; i < m; i++)
			GUEST_SYNC(44, i);
		long syncs0 = (long)(rdtsc() - t0);
		GUEST_SYNC(42, 4);
		GUEST_SYNC(42, 5);
		GUEST_SYNC(41, calls, m, sys, m);
		GUEST_SYNC(43, syncs3, syncs0, m, guest_user_io);
		GUEST_DONE();
	}
	if (!strcmp(cmdline, "irq")) {
		irq_mode();
		GUEST_DONE();
	}
	if (!strncmp(cmdline, "floor", 5)) {
		floor_mode((long)parse_u64(arg));
		GUEST_DONE();
	}
	printf("usermode: unknown mode \"%s\"\n", cmdline);
	return 2;
}

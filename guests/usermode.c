/* usermode - user mode (CPL3) in the guest SDK (tests/integration/test_usermode.py,
 * bench/usermode.py).  Vector code is in usermode_user.c, built with --user-src.
 *
 *   call          GUEST_USER_CALL: result back at CPL0; GUEST_SYNC, GUEST_PRINTF, printf
 *                 and puts from user code
 *   fault KIND    a fault in user code with no TRY: pf, gp, ud, de, wp (write to a
 *                 read-only user page): reported as an unhandled exception at CPL3
 *   try           each fault again through GUEST_USER_TRY_CALL, then a user call that works
 *   assert        GUEST_ASSERT_EQ failing in user code
 *   exit N        exit(N) from user code;  done: GUEST_DONE from user code
 *   vec SEED      SSE2 (and AVX2 where CPUID has it) sums in user code, for the host to check
 *   smp           every AP makes a user call too
 *   speed N M     bench: N loop iterations at CPL3 and N/1000 at CPL0; M user calls and M
 *                 system calls; cycles (guest TSC) in GUEST_SYNC 40 and 41
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
		uint64_t t0 = rdtsc();
		for (long i = 0; i < m; i++)
			GUEST_USER_CALL(nop, i);
		long calls = (long)(rdtsc() - t0);
		long sys = GUEST_USER_CALL(syscalls, m);
		GUEST_SYNC(41, calls, m, sys, m);
		GUEST_DONE();
	}
	printf("usermode: unknown mode \"%s\"\n", cmdline);
	return 2;
}

/* debugme - the debugger's test guest: symbols to break at, an argument with a known
 * value, a known store to watch, a second vCPU to show as a second thread, a loop to
 * pause with Ctrl-C and a crash to dump a core of.  The command line picks the mode:
 *   (empty)  debug_compute(7) -> debug_checkpoint(22); debug_store(); exit 0
 *   spin     loop until the host (gdb: set var release = 1) sets `release`
 *   crash    a store to an unmapped address three calls deep (triple fault, no IDT)
 *   assert   GUEST_ASSERT_EQ(debug_compute(7), 0) fails
 * With two vCPUs the AP counts in debug_ap_loop until `release` is set. */
#include <pyvmm/guest.h>

volatile uint64_t watched;   /* debug_store() writes 0x1234 here */
volatile uint32_t release;   /* set by the host (or gdb) to end the spin loops */
volatile uint64_t spins;
volatile uint64_t ap_count;

__attribute__((noinline)) void debug_checkpoint(uint64_t value)
{
	__asm__ volatile("" : : "r"(value) : "memory");
}

__attribute__((noinline)) uint64_t debug_compute(uint64_t seed)
{
	uint64_t local = seed * 3 + 1;
	debug_checkpoint(local);
	return local;
}

__attribute__((noinline)) void debug_store(void)
{
	watched = 0x1234;
	__asm__ volatile("nop; nop" ::: "memory");
}

__attribute__((noinline)) void debug_crash_inner(volatile uint64_t *where)
{
	*where = 0xbad;
}

__attribute__((noinline)) void debug_crash_outer(void)
{
	debug_crash_inner((volatile uint64_t *)0x7ff000000000ul); /* not mapped */
	__asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void debug_ap_loop(uint32_t index)
{
	while (!release)
		ap_count += index + 1;
}

void ap_main(uint32_t index)
{
	__atomic_add_fetch(&ap_started, 1, __ATOMIC_SEQ_CST);
	debug_ap_loop(index);
	for (;;)
		__asm__ volatile("cli; hlt");
}

int main(struct boot_info *bi, const char *cmdline)
{
	if (bi->ncpus > 1 && smp_start_aps(bi->ncpus - 1) != bi->ncpus - 1)
		return 3;
	if (!strcmp(cmdline, "spin")) {
		while (!release)
			spins++;
		printf("released after %lu spins\n", (unsigned long)spins);
		return 0;
	}
	if (!strcmp(cmdline, "crash")) {
		debug_crash_outer();
		return 4;
	}
	if (!strcmp(cmdline, "assert"))
		GUEST_ASSERT_EQ(debug_compute(7), 0);
	uint64_t v = debug_compute(7);
	debug_store();
	printf("debugme: computed %lu, watched 0x%lx\n", (unsigned long)v, (unsigned long)watched);
	release = 1;
	return v == 22 ? 0 : 1;
}

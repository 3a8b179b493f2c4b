/* fuzzme - a fuzz target for pyvmm.fuzz (tests/integration/test_fuzz_target.py,
 * test_afl.py).  The parser is in fuzzme_user.c (built with --user-src, run at CPL3);
 * the command line picks the harness:
 *
 *   (empty)   GUEST_USER_CALL(fuzz_one): one input per run, parsed at CPL3
 *   loop      the same, but a loop: every GUEST_FUZZ_INPUT after the first ends an input
 *   cpl0      fuzz_one at CPL0 (slow on kvm_pvm: emulated)
 *   nosync    never reaches GUEST_FUZZ_INPUT (exit 3): a clear error before fuzzing
 *   badbuf    GUEST_FUZZ_INPUT with a buffer outside guest RAM
 *
 * What an input does (fuzzme_user.c): "CRASH" -> a #PF at CPL3, "ABRT" -> GUEST_ASSERT,
 * "HANG" -> a loop forever, "EXIT" -> exit(7), "SMASH" -> the guest wipes its own IDT and
 * page tables (the next restore must put them back) then faults; else GUEST_SYNC(2, n,
 * sum of bytes) and GUEST_DONE.
 */
#include <pyvmm/guest.h>

long fuzz_one(long unused);
long fuzz_loop(long unused);

int main(struct boot_info *bi, const char *cmdline)
{
	(void)bi;
	if (!strcmp(cmdline, "nosync"))
		return 3;
	if (!strcmp(cmdline, "badbuf")) {
		GUEST_FUZZ_INPUT((void *)0x7000000000ul, 4096);
		return 0;
	}
	if (!strcmp(cmdline, "cpl0"))
		return (int)fuzz_one(0);
	if (!strcmp(cmdline, "loop"))
		return (int)GUEST_USER_CALL(fuzz_loop, 0);
	return (int)GUEST_USER_CALL(fuzz_one, 0);
}

/* A guest of a user's own project: built with `pyvmm guest build`, tested with pytest.
 *
 *   fib N     GUEST_SYNC(1, fib(N)), then checks what the host wrote into `answer`
 *   fail      a GUEST_ASSERT_EQ that fails (the test expects it, with file:line)
 */
#include <pyvmm/guest.h>

volatile uint64_t answer; /* the host writes here at sync 1 */

static uint64_t fib(uint64_t n)
{
	uint64_t a = 0, b = 1;
	while (n--) {
		uint64_t t = a + b;
		a = b;
		b = t;
	}
	return a;
}

int main(struct boot_info *bi, const char *cmdline)
{
	printf("hello-project on %u vCPU(s): \"%s\"\n", bi->ncpus, cmdline);
	if (!strncmp(cmdline, "fib ", 4)) {
		uint64_t f = fib(parse_u64(cmdline + 4));
		GUEST_SYNC(1, f);
		GUEST_ASSERT_EQ(answer, f * 2);
		GUEST_DONE();
	}
	if (!strcmp(cmdline, "fail"))
		GUEST_ASSERT_EQ(fib(10), 56);
	return 3;
}

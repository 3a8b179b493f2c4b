/* harness.c - the fuzz harness, at CPL3 (built with --user-src, instrumented with
 * --coverage along with tlv.c): one input per run, from GUEST_FUZZ_INPUT. */
#include <pyvmm/guest.h>

#include "tlv.h"

static uint8_t input[64 * 1024];

long fuzz_tlv(long unused)
{
	(void)unused;
	struct tlv_summary s;
	size_t n = GUEST_FUZZ_INPUT(input, sizeof(input));
	tlv_parse(input, n, &s);
	GUEST_DONE();
}

/* fuzz.c - the input point of a fuzz target (fuzz.h): a GUEST_SYNC the host answers by
 * writing the input into the buffer and its length into guest_fuzz_len. */
#include <pyvmm/fuzz.h>
#include <pyvmm/ucall.h>

/* the length the host writes (8 bytes); a static, so it is user-accessible and
 * identity-mapped wherever the caller's stack is */
volatile uint64_t guest_fuzz_len;

size_t guest_fuzz_input(void *buf, size_t maxlen)
{
	guest_fuzz_len = 0;
	GUEST_SYNC(GUEST_FUZZ_STAGE, (uint64_t)buf, (uint64_t)maxlen, (uint64_t)&guest_fuzz_len);
	uint64_t n = guest_fuzz_len;
	return n <= maxlen ? (size_t)n : maxlen; /* the host checks it; so does the guest */
}

/* fuzz_cov.c - the coverage hook for `pyvmm guest build --coverage` (fuzz.h).
 *
 * gcc's -fsanitize-coverage=trace-pc puts a call to __sanitizer_cov_trace_pc() at the top
 * of every basic block of the instrumented sources.  This file is not instrumented (it is
 * linked on its own, outside the runtime archive) and makes no system call: called at CPL3
 * it runs natively, touching only the map, which lies in the guest image's .bss and so
 * has the U bit once user mode is set up.  Edges are counted as AFL counts them: a hash
 * of the block's address gives cur, and map[cur ^ prev]++ with prev = cur >> 1, so A->B
 * and B->A land in different cells; a count wraps from 255 to 1, never to 0.  The host zeroes the map and prev before it takes
 * the fuzzing snapshot, so every restore starts an input from an empty map.
 */
#include <pyvmm/fuzz.h>

uint8_t __pyvmm_cov_map[GUEST_FUZZ_MAP_SIZE] __attribute__((aligned(4096)));
uint64_t __pyvmm_cov_prev;

void __sanitizer_cov_trace_pc(void)
{
	uint64_t pc = (uint64_t)__builtin_return_address(0);
	/* Fibonacci hashing: the top bits of pc * 2^64/phi spread nearby blocks apart */
	uint64_t cur = (pc * 0x9e3779b97f4a7c15ull) >> (64 - 16);
	uint8_t *cell = &__pyvmm_cov_map[(cur ^ __pyvmm_cov_prev) & (GUEST_FUZZ_MAP_SIZE - 1)];
	/* never back to zero: an edge taken 256 times must not read as never taken (AFL++'s
	 * NeverZero counters do the same) */
	*cell += 1 + (*cell == 255);
	__pyvmm_cov_prev = cur >> 1;
}

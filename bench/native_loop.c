/* native_loop - the reference for bench/usermode.py: guests/usermode.c's spin loop (DEC;JNZ,
 * two instructions per iteration) run by the host CPU itself.  Prints TSC cycles for N. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <x86intrin.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 100000000;
	if (n <= 0)
		return 2;
	uint64_t t0 = __rdtsc();
	__asm__ volatile("1: dec %0; jnz 1b" : "+r"(n));
	printf("%llu\n", (unsigned long long)(__rdtsc() - t0));
	return 0;
}

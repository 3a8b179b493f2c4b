/* usermode_user.c - the user-mode half of guests/usermode.c: built with --user-src, so it
 * gets the host's vector ISA (-march=native) while everything else keeps the CPL0 flags.
 * Each function here runs at CPL3 only (GUEST_USER_CALL): at CPL0 on kvm_pvm its SSE/AVX
 * instructions would end the run with an emulation failure.
 */
#include <stdint.h>

#define VEC_N 4096
uint32_t vec_data[VEC_N];

typedef uint32_t v4u __attribute__((vector_size(16)));
typedef uint32_t v8u __attribute__((vector_size(32)));

/* xorshift32 from seed arg: the data both halves and the host test agree on */
long vec_fill(long seed)
{
	uint32_t x = (uint32_t)seed;
	for (int i = 0; i < VEC_N; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		vec_data[i] = x;
	}
	return 0;
}

/* sum of squares mod 2^32, four lanes at a time (SSE2: pmuludq/paddd) */
__attribute__((target("sse2"))) long vec_sse2(long unused)
{
	(void)unused;
	v4u acc = {0, 0, 0, 0};
	for (int i = 0; i < VEC_N; i += 4) {
		v4u v;
		__builtin_memcpy(&v, &vec_data[i], sizeof(v));
		acc += v * v;
	}
	return (long)(uint32_t)(acc[0] + acc[1] + acc[2] + acc[3]);
}

/* the same eight lanes at a time in 256-bit registers (AVX2: vpmulld/vpaddd ymm) */
__attribute__((target("avx2"))) long vec_avx2(long unused)
{
	(void)unused;
	v8u acc = {0};
	for (int i = 0; i < VEC_N; i += 8) {
		v8u v;
		__builtin_memcpy(&v, &vec_data[i], sizeof(v));
		acc += v * v;
	}
	uint32_t s = 0;
	for (int i = 0; i < 8; i++)
		s += acc[i];
	return (long)s;
}

/* doubles: sum of i / 2 for i < arg, exact in binary (cvtsi2sd/addsd, which CPL0 lacks) */
__attribute__((target("sse2"))) long vec_double(long n)
{
	volatile double s = 0;
	for (long i = 0; i < n; i++)
		s += (double)i * 0.5;
	return (long)(s * 2.0);
}

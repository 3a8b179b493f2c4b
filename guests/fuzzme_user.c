/* fuzzme_user.c - fuzzme's parser (see fuzzme.c); runs at CPL3 (and at CPL0 for "cpl0",
 * so no vector code: the compiler may still use SSE here, cpl0 inputs stay short). */
#include <pyvmm/guest.h>

static uint8_t input[4096];

static int starts(const uint8_t *p, size_t n, const char *word)
{
	size_t k = strlen(word);
	return n >= k && !memcmp(p, word, k);
}

static void parse(const uint8_t *p, size_t n)
{
	if (starts(p, n, "CRASH"))
		*(volatile long *)0x48000000000ul = 1;  /* not mapped: #PF */
	if (starts(p, n, "ABRT"))
		GUEST_ASSERT_EQ(n, 0);
	if (starts(p, n, "HANG"))
		for (;;)
			__asm__ volatile("" ::: "memory");
	if (starts(p, n, "EXIT"))
		exit(7);
	if (starts(p, n, "SMASH")) {
		/* wreck the runtime's state and the IDT (both writable from CPL3: the image
		 * has the U bit), then fault; only a restore can bring the guest back */
		struct __attribute__((packed)) { uint16_t limit; uint64_t base; } idtr;
		__asm__ volatile("sidt %0" : "=m"(idtr));
		guest_sys_via_fault = 0;
		memset((void *)idtr.base, 0, 16 * 16);  /* the gates of #DE..#PF */
		*(volatile long *)0x48000000000ul = 1;
	}
	uint64_t sum = 0;
	for (size_t i = 0; i < n; i++)
		sum += p[i];
	GUEST_SYNC(2, n, sum);
}

long fuzz_one(long unused)
{
	(void)unused;
	size_t n = GUEST_FUZZ_INPUT(input, sizeof(input));
	parse(input, n);
	GUEST_DONE();
}

long fuzz_loop(long unused)
{
	(void)unused;
	for (;;) {
		size_t n = GUEST_FUZZ_INPUT(input, sizeof(input));
		parse(input, n);
	}
}

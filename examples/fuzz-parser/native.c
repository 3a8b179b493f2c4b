/* native.c - the reference: the same parser as a native AFL++ persistent-mode target
 * (afl-cc), inputs in shared memory, 100000 inputs per fork. */
#include <stdint.h>
#include <unistd.h>

#include "tlv.h"

__AFL_FUZZ_INIT();

int main(void)
{
	__AFL_INIT();
	unsigned char *buf = __AFL_FUZZ_TESTCASE_BUF;
	while (__AFL_LOOP(100000)) {
		struct tlv_summary s;
		tlv_parse(buf, (size_t)__AFL_FUZZ_TESTCASE_LEN, &s);
	}
	return 0;
}

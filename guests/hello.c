/* hello - the smallest pyvmm guest: one line on the serial port, exit status 0. */
#include <pyvmm/guest.h>

int main(struct boot_info *bi, const char *cmdline)
{
	printf("Hello from a pyvmm guest: %u vCPU(s), %lu MiB RAM", bi->ncpus, bi->ram_size >> 20);
	if (*cmdline)
		printf(", cmdline \"%s\"", cmdline);
	printf("\n");
	return 0;
}

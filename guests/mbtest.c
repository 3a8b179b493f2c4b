/* mbtest - placeholder until the multiboot test kernel lands */
#include "rt.h"
int main(struct boot_info *bi, const char *cmdline)
{
	printf("mbtest: argv0 \"%s\" cmdline \"%s\" ncpus %u ram %lu\n", mb_argv0, cmdline,
	       bi->ncpus, bi->ram_size >> 20);
	return 0;
}

/* hostile - a guest that does what a VMM must survive, one mode per command line:
 *
 *   flood MIB        MIB MiB of serial output, 4 KiB per `rep outsb` (one exit each)
 *   printf N         N GUEST_PRINTFs          sync N     N GUEST_SYNCs
 *   mmio N           reads of N distinct unclaimed MMIO addresses
 *   ports            one read of each of the 65536 ports
 *   partial          "prompt> " with no newline, then halt with interrupts off
 *   flushrace        (multiboot, --cpus >1) the APs flush main()'s code page through
 *                    pc-testdev 0xe4 over and over while the BSP triple-faults
 *   irqline          raise pc-testdev ISA IRQ line 3 (multiboot)
 *   wildrip          jump to an address outside RAM and the image
 *   fault            #GP outside GUEST_TRY after idt_catch_faults(): reported, not a storm
 *   badcmd           a ucall with an unknown command
 *   aliascore        every free PML4 slot -> one PDPT of 512 1 GiB pages at physical 0
 *                    (all of RAM aliased ~100,000 times; never accessed), then a triple
 *                    fault: a --core must still hold each page once
 */
#include <pyvmm/guest.h>

static char chunk[4096];
static uint64_t alias_pdpt[512] __attribute__((aligned(4096)));
static volatile int go;

/* Filling the chunk is ~30k instructions: ~30 ms where kvm_pvm emulates CPL0 code, a few
 * microseconds at CPL3 (docs/guests.md, "User mode"); the port I/O stays at CPL0. */
static long fill_chunk(long unused)
{
	(void)unused;
	for (unsigned i = 0; i < sizeof(chunk); i++)
		chunk[i] = (i % 64 == 63) ? '\n' : (char)('a' + i % 26);
	return 0;
}

static void flood(uint64_t mib)
{
	GUEST_USER_CALL(fill_chunk, 0);
	for (uint64_t n = mib * 256; n; n--) {
		const char *p = chunk;
		uint64_t count = sizeof(chunk);
		__asm__ volatile("rep outsb" : "+S"(p), "+c"(count) : "d"((uint16_t)0x3f8) : "memory");
	}
}

void ap_main(uint32_t index)
{
	(void)index;
	__atomic_add_fetch(&ap_started, 1, __ATOMIC_SEQ_CST);
	uint32_t page = (uint32_t)((uint64_t)main & ~0xFFFul);
	while (!go)
		cpu_relax();
	for (;;)
		outl(0xe4, page);
}

int main(struct boot_info *bi, const char *cmdline)
{
	const char *arg = skip_word(cmdline);
	uint64_t n = parse_u64(arg);
	if (!strncmp(cmdline, "flood", 5)) {
		flood(n);
		return 0;
	}
	if (!strncmp(cmdline, "printf", 6)) {
		for (uint64_t i = 0; i < n; i++)
			GUEST_PRINTF("line %lu of a long printf flood", i);
		return 0;
	}
	if (!strncmp(cmdline, "sync", 4)) {
		for (uint64_t i = 0; i < n; i++)
			GUEST_SYNC(1, i);
		return 0;
	}
	if (!strncmp(cmdline, "mmio", 4)) {
		for (uint64_t i = 0; i < n; i++)
			(void)mmio_read32(0xd0000000ul + i * 8);
		return 0;
	}
	if (!strcmp(cmdline, "ports")) {
		for (uint32_t p = 0; p < 65536; p++)
			if (p != 0xf4 && (p < 0x3f8 || p > 0x3ff))
				(void)inb((uint16_t)p);
		return 0;
	}
	if (!strcmp(cmdline, "partial")) {
		printf("prompt> ");
		for (;;)
			__asm__ volatile("cli; hlt");
	}
	if (!strcmp(cmdline, "flushrace")) {
		smp_start_aps(bi->ncpus - 1);
		go = 1;
		for (volatile int i = 0; i < 200; i++)
			;
		__asm__ volatile("ud2"); /* no IDT: a triple fault, with main's page being flushed */
	}
	if (!strcmp(cmdline, "irqline")) {
		outb(0x2000 + 3, 1);
		return 0;
	}
	if (!strcmp(cmdline, "wildrip")) {
		void (*nowhere)(void) = (void (*)(void))0x7ff00000ul;
		nowhere();
	}
	if (!strcmp(cmdline, "fault")) {
		idt_install();
		idt_catch_faults();
		uint64_t v;
		int ok = GUEST_TRY("rdmsr", "=a"(v) : "c"(0x12345678u) : "rdx", "memory");
		GUEST_ASSERT(!ok && fault_vector == 13);
		/* a #GP nobody expects: the same MSR, outside GUEST_TRY */
		__asm__ volatile("rdmsr" : "=a"(v) : "c"(0x12345678u) : "rdx");
		return 0;
	}
	if (!strcmp(cmdline, "badcmd")) {
		struct ucall uc = { .cmd = 99 };
		ucall(&uc);
		return 0;
	}
	if (!strcmp(cmdline, "aliascore")) {
		uint64_t *pml4 = (uint64_t *)(read_cr3() & ~0xffful);
		for (int i = 0; i < 512; i++)
			alias_pdpt[i] = 0x83; /* present, writable, 1 GiB page at 0 */
		for (int i = 0; i < 256; i++)
			if (!pml4[i])
				pml4[i] = (uint64_t)alias_pdpt | 3;
		__asm__ volatile("ud2"); /* no IDT: a triple fault, and the core */
	}
	printf("hostile: unknown mode \"%s\"\n", cmdline);
	return 99;
}

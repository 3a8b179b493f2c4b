/* selftest - one guest, many behaviours, picked by the first word of the command line.
 * The integration tests in tests/integration drive it; each mode says what it shows.
 *
 *   exit N            exit with status N through the debug-exit port
 *   exit16 N          the same with a 2-byte write;  exit8 N: 1-byte write
 *   triple            load an empty IDT and execute ud2: #UD -> #GP -> #DF -> triple fault
 *   spin              loop forever (the VMM's timeout must stop it)
 *   hlt               cli; hlt forever (a vCPU blocked in the kernel must still stop)
 *   mmio ADDR         write 0x1234abcd to ADDR, read it back, print both
 *   rowrite ADDR      write to a read-only slot, then check the memory is unchanged
 *   unclaimed         read port 0x2f0 and MMIO 0xd0000000 (expect all-ones), write both
 *   bootinfo          print the boot-info block and the memory map
 *   smp               start every AP by INIT/SIPI; each reports in; exit 0 if all did
 *   post N            write N codes to port 0x80 (fast counter) then exit 0
 *   touch ADDR N      write one byte in each of N pages from ADDR (for the dirty log)
 *   popcnt            execute popcnt: native on VMX/SVM (exit 0), an emulation failure
 *                     where KVM emulates CPL0 code (kvm_pvm)
 */
#include <pyvmm/guest.h>

static void do_exit_sized(const char *arg, int size)
{
	uint32_t v = (uint32_t)parse_u64(arg);
	if (size == 1)
		outb(PORT_DEBUG_EXIT, (uint8_t)v);
	else if (size == 2)
		__asm__ volatile("outw %0, %1" :: "a"((uint16_t)v), "Nd"((uint16_t)PORT_DEBUG_EXIT));
	else
		outl(PORT_DEBUG_EXIT, v);
	for (;;)
		__asm__ volatile("cli; hlt");
}

static void triple_fault(void)
{
	struct __attribute__((packed)) { uint16_t limit; uint64_t base; } idtr = {0, 0};
	__asm__ volatile("lidt %0; ud2" :: "m"(idtr));
}

static int mmio(uint64_t addr)
{
	mmio_write32(addr, 0x1234abcd);
	uint32_t back = mmio_read32(addr);
	printf("mmio: wrote 0x1234abcd to %p, read %x\n", (void *)addr, back);
	return back == 0x1234abcd ? 0 : 1;
}

static int rowrite(uint64_t addr)
{
	volatile uint32_t *p = (volatile uint32_t *)addr;
	uint32_t before = *p;
	*p = 0xdeadbeef;
	uint32_t after = *p;
	printf("rowrite: before %x after %x\n", before, after);
	return before == after ? 0 : 1;
}

static int unclaimed(void)
{
	uint8_t b = inb(0x2f0);
	uint32_t m = mmio_read32(0xd0000000ul);
	outb(0x2f0, 1);
	mmio_write32(0xd0000000ul, 2);
	printf("unclaimed: port 0x2f0 -> %x, mmio 0xd0000000 -> %x\n", b, m);
	return b == 0xff && m == 0xffffffffu ? 0 : 1;
}

static int bootinfo(struct boot_info *bi)
{
	printf("magic %x version %u ram %lu ncpus %u\n", bi->magic, bi->version, bi->ram_size,
	       bi->ncpus);
	printf("stack %lx+%lx vmm %lx+%lx\n", bi->stack_base, bi->stack_size, bi->vmm_base,
	       bi->vmm_size);
	struct boot_mmap_entry *e = (struct boot_mmap_entry *)bi->mmap_addr;
	for (uint32_t i = 0; i < bi->mmap_count; i++)
		printf("mmap %lx %lx %u\n", e[i].base, e[i].length, e[i].type);
	uint64_t rsp;
	__asm__ volatile("mov %%rsp, %0" : "=r"(rsp));
	printf("rsp %lx\n", rsp);
	return bi->magic == BOOT_MAGIC ? 0 : 1;
}

void ap_main(uint32_t index)
{
	printf("smp: AP %u running in long mode\n", index + 1);
	__atomic_add_fetch(&ap_started, 1, __ATOMIC_SEQ_CST); /* after the line is out */
	for (;;)
		__asm__ volatile("cli; hlt");
}

static int smp(struct boot_info *bi)
{
	unsigned want = bi->ncpus - 1;
	unsigned got = smp_start_aps(want);
	printf("smp: %u of %u APs started\n", got, want);
	return got == want ? 0 : 1;
}

int main(struct boot_info *bi, const char *cmdline)
{
	const char *arg = skip_word(cmdline);
	if (!strncmp(cmdline, "exit16 ", 7))
		do_exit_sized(arg, 2);
	if (!strncmp(cmdline, "exit8 ", 6))
		do_exit_sized(arg, 1);
	if (!strncmp(cmdline, "exit ", 5))
		do_exit_sized(arg, 4);
	if (!strcmp(cmdline, "triple"))
		triple_fault();
	if (!strcmp(cmdline, "spin"))
		for (;;)
			__asm__ volatile("" ::: "memory");
	if (!strcmp(cmdline, "hlt"))
		for (;;)
			__asm__ volatile("cli; hlt");
	if (!strncmp(cmdline, "mmio ", 5))
		return mmio(parse_u64(arg));
	if (!strncmp(cmdline, "rowrite ", 8))
		return rowrite(parse_u64(arg));
	if (!strcmp(cmdline, "unclaimed"))
		return unclaimed();
	if (!strcmp(cmdline, "bootinfo"))
		return bootinfo(bi);
	if (!strcmp(cmdline, "smp"))
		return smp(bi);
	if (!strncmp(cmdline, "post ", 5)) {
		for (uint64_t i = parse_u64(arg); i; i--)
			outb(0x80, (uint8_t)i);
		return 0;
	}
	if (!strcmp(cmdline, "popcnt")) {
		uint64_t v = 0xF0F0, n;
		__asm__ volatile("popcnt %1, %0" : "=r"(n) : "r"(v));
		return n == 8 ? 0 : 1;
	}
	if (!strncmp(cmdline, "touch ", 6)) {
		volatile uint8_t *p = (volatile uint8_t *)parse_u64(arg);
		for (uint64_t i = parse_u64(skip_word(arg)); i; i--, p += 4096)
			*p = 1;
		return 0;
	}
	printf("selftest: unknown mode \"%s\"\n", cmdline);
	return 99;
}

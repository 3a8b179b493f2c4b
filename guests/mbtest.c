/* mbtest - a QEMU-style multiboot test kernel (built as mbtest.flat): 32-bit entry that goes
 * to long mode, then, by the first word of its command line (after argv[0]):
 *
 *   info      print argv[0], the command line, fw_cfg's RAM size and CPU count, the module
 *   fwcfg     read fw_cfg: signature, id, RAM size, CPUs, max CPUs, an unknown key
 *   env       print the module (the --initrd environment) line by line
 *   smp       start every AP by INIT/SIPI broadcast; each reports its APIC ID
 *   acpi      find the RSDP in 0xE0000-0xFFFFF, walk RSDT -> FADT, read the PM timer twice
 *   testdev   use every pc-testdev port: scratch, flush page, IRQ lines, iomem; Bochs port
 *   pci       read vendor IDs through 0xcf8/0xcfc
 *   cmos      read the RTC and the shutdown status byte
 *   exit N    write N to isa-debug-exit
 *
 * Each failed check prints "FAIL: why"; the mode ends with "PASS: <mode>" or "FAIL: <mode>"
 * and kvm-unit-tests' "SUMMARY:" line, and exits 0 or 1 through the debug-exit port.
 */
#include <pyvmm/guest.h>

static int failures;
#define CHECK(cond, ...) do { if (!(cond)) { printf("FAIL: " __VA_ARGS__); printf("\n"); failures++; } } while (0)

static void fw_select(uint16_t key) { outw(0x510, key); }
static uint64_t fw_read(int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++)
		v |= (uint64_t)inb(0x511) << (8 * i);
	return v;
}

static int fwcfg(void)
{
	fw_select(0);
	char sig[5] = {0};
	for (int i = 0; i < 4; i++)
		sig[i] = (char)inb(0x511);
	CHECK(!strcmp(sig, "QEMU"), "signature %s", sig);
	fw_select(1);
	uint64_t id = fw_read(4);
	fw_select(3);
	uint64_t ram = fw_read(8);
	fw_select(5);
	uint64_t ncpus = fw_read(2);
	fw_select(0xf);
	uint64_t maxcpus = fw_read(2);
	fw_select(0x1234);
	uint64_t unknown = fw_read(4);
	printf("fwcfg: id %lx ram %lu MiB cpus %lu max %lu unknown %lx\n", id, ram >> 20, ncpus,
	       maxcpus, unknown);
	CHECK(id & 1, "id %lx", id);
	/* multiboot's mem_upper may leave out a reserved tail (QEMU's does): within 1 MiB */
	CHECK(ram >= boot_info->ram_size && ram - boot_info->ram_size < (1ul << 20),
	      "fw_cfg RAM %lu vs multiboot %lu", ram, boot_info->ram_size);
	CHECK(ncpus >= 1 && maxcpus >= ncpus && unknown == 0, "cpus %lu max %lu", ncpus, maxcpus);
	return 0;
}

static int env(void)
{
	CHECK(mb_module_start != 0, "no module");
	if (!mb_module_start)
		return 0;
	const char *p = mb_module_start;
	printf("env: %lu bytes\n", mb_module_size);
	for (uint64_t i = 0; i < mb_module_size;) {
		printf("env: ");
		while (i < mb_module_size && p[i] != '\n')
			putc(p[i++]);
		putc('\n');
		i++;
	}
	return 0;
}

void ap_main(uint32_t index)
{
	(void)index;
	apic_enable(0);
	printf("smp: AP with APIC ID %u up\n", apic_id());
	__atomic_add_fetch(&ap_started, 1, __ATOMIC_SEQ_CST);
	for (;;)
		__asm__ volatile("cli; hlt");
}

static int smp(void)
{
	apic_enable(0);
	unsigned want = boot_info->ncpus - 1;
	unsigned got = smp_start_aps(want);
	printf("smp: BSP APIC ID %u, %u of %u APs up\n", apic_id(), got, want);
	CHECK(got == want, "APs %u of %u", got, want);
	return 0;
}

static int acpi(void)
{
	const uint8_t *rsdp = 0;
	for (uint64_t a = 0xE0000; a < 0x100000; a += 16)
		if (!memcmp((void *)a, "RSD PTR ", 8)) {
			rsdp = (const uint8_t *)a;
			break;
		}
	CHECK(rsdp, "no RSDP");
	if (!rsdp)
		return 0;
	uint8_t sum = 0;
	for (int i = 0; i < 20; i++)
		sum += rsdp[i];
	CHECK(sum == 0, "RSDP checksum");
	const uint8_t *rsdt = (const uint8_t *)(uint64_t)*(const uint32_t *)(rsdp + 16);
	uint32_t len = *(const uint32_t *)(rsdt + 4);
	const uint8_t *fadt = 0;
	for (uint32_t off = 36; off < len; off += 4) {
		const uint8_t *t = (const uint8_t *)(uint64_t)*(const uint32_t *)(rsdt + off);
		uint8_t s = 0;
		for (uint32_t i = 0; i < *(const uint32_t *)(t + 4); i++)
			s += t[i];
		CHECK(s == 0, "checksum of %c%c%c%c", t[0], t[1], t[2], t[3]);
		if (!memcmp(t, "FACP", 4))
			fadt = t;
	}
	CHECK(fadt, "no FADT");
	if (!fadt)
		return 0;
	uint16_t port = (uint16_t)*(const uint32_t *)(fadt + 76);
	uint32_t t0 = inl(port);
	for (volatile int i = 0; i < 2000; i++)
		;
	uint32_t t1 = inl(port);
	printf("acpi: PM timer at %x: %u -> %u\n", port, t0, t1);
	CHECK(t1 != t0, "PM timer does not move");
	return 0;
}

static int testdev(void)
{
	outl(0xe0, 0x12345678);
	CHECK(inl(0xe0) == 0x12345678, "scratch l");
	outw(0xe0, 0xbeef);
	CHECK(inw(0xe0) == 0xbeef, "scratch w");
	outb(0xe0, 0x5a);
	CHECK(inb(0xe0) == 0x5a, "scratch b");
	static volatile uint64_t page[512] __attribute__((aligned(4096)));
	page[0] = 0x77;
	outl(0xe4, (uint32_t)(uint64_t)page);
	CHECK(page[0] == 0x77, "page content after flush");
	outb(0x2000 + 4, 1); /* ISA IRQ 4 up and down */
	outb(0x2000 + 4, 0);
	volatile uint32_t *iomem = (volatile uint32_t *)0xff000000ul;
	iomem[0] = 0xcafef00d;
	iomem[100] = 0x1234;
	CHECK(iomem[0] == 0xcafef00d && iomem[100] == 0x1234, "iomem");
	CHECK(inb(0x2f0) == 0xff, "unassigned port reads all-ones");
	return 0;
}

static int pci(void)
{
	outl(0xcf8, 0x80000000u);
	uint32_t v = inl(0xcfc);
	CHECK(inl(0xcf8) == 0x80000000u, "config address readback");
	printf("pci: 00:00.0 vendor/device %x\n", v);
	CHECK(v == 0xffffffffu, "a device answered");
	return 0;
}

static int cmos(void)
{
	outb(0x70, 0x0b);
	uint8_t b = inb(0x71);
	outb(0x70, 0x0f);
	outb(0x71, 0x0a);
	outb(0x70, 0x0f);
	uint8_t shut = inb(0x71);
	outb(0x70, 0x00);
	uint8_t sec = inb(0x71);
	printf("cmos: status B %x shutdown %x seconds %x\n", b, shut, sec);
	CHECK(shut == 0x0a && (sec & 0x0f) < 10, "cmos");
	return 0;
}

int main(struct boot_info *bi, const char *cmdline)
{
	idt_install();
	const char *arg = skip_word(cmdline);
	if (!strncmp(cmdline, "exit ", 5))
		exit((uint32_t)parse_u64(arg));
	if (!strncmp(cmdline, "info", 4))
		printf("info: argv0 \"%s\" cmdline \"%s\" ncpus %u ram %lu MiB module %lu bytes\n",
		       mb_argv0, cmdline, bi->ncpus, bi->ram_size >> 20, mb_module_size);
	else if (!strncmp(cmdline, "fwcfg", 5))
		fwcfg();
	else if (!strncmp(cmdline, "env", 3))
		env();
	else if (!strncmp(cmdline, "smp", 3))
		smp();
	else if (!strncmp(cmdline, "acpi", 4))
		acpi();
	else if (!strncmp(cmdline, "testdev", 7))
		testdev();
	else if (!strncmp(cmdline, "pci", 3))
		pci();
	else if (!strncmp(cmdline, "cmos", 4))
		cmos();
	else if (!strncmp(cmdline, "shutdown", 8)) {
		const char *w = "Shutdown";
		while (*w)
			outb(0x8900, (uint8_t)*w++);
		printf("FAIL: still running after Shutdown\n");
		return 1;
	} else {
		printf("FAIL: unknown mode \"%s\"\n", cmdline);
		return 1;
	}
	report(!failures, "%s", cmdline);
	return report_summary();
}

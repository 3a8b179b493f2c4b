/* vmexit - in-guest exit costs in TSC cycles, in the style of kvm-unit-tests' vmexit tests.
 * Built as vmexit.flat (multiboot), so pyvmm and QEMU run the very same file (bench/run.py
 * compares them).  One line per row: "vmexit: NAME CYCLES" (median of ROUNDS batches).
 *
 *   cpuid        CPUID leaf 0: handled in the kernel
 *   inl_unassigned   IN from an unassigned port (0x2f0): a userspace exit
 *   outl_unassigned  OUT to it: a userspace exit
 *   mmio_write   a store to an unassigned MMIO address (0xd0000000): a userspace exit
 *   elcr         IN from the PIC's ELCR (0x4d0): handled in the kernel
 *   ipi          BSP -> AP -> BSP IPI round trip, halved (needs 2 vCPUs)
 *   loop         the same loop with an empty operation: the baseline to subtract
 *                (guest code is emulated on kvm_pvm, so the loop itself costs microseconds)
 */
#include <pyvmm/guest.h>

#define N 200
#define ROUNDS 5

static volatile unsigned pongs;

static void ap_isr(struct ex_regs *r) { (void)r; apic_eoi(); apic_send_ipi(0, 0x61); }
static void bsp_isr(struct ex_regs *r) { (void)r; pongs++; apic_eoi(); }

void ap_main(uint32_t index)
{
	(void)index;
	idt_install();
	apic_enable(0);
	__atomic_add_fetch(&ap_started, 1, __ATOMIC_SEQ_CST);
	for (;;)
		safe_halt();
}

static uint64_t op_nop(void) { __asm__ volatile("" ::: "memory"); return 0; }
static uint64_t op_cpuid(void)
{
	uint32_t a = 0, b, c = 0, d;
	__asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
	return a;
}
static uint64_t op_inl(void) { return inl(0x2f0); }
static uint64_t op_outl(void) { outl(0x2f0, 0); return 0; }
static uint64_t op_mmio(void) { mmio_write32(0xd0000000ul, 0); return 0; }
static uint64_t op_elcr(void) { return inb(0x4d0); }
/* the ACPI PM timer (PIIX4 PM base 0x600 + 8 on both pyvmm's and QEMU's PC), as
 * kvm-unit-tests' vmexit inl_from_pmtimer reads it */
static uint64_t op_pmtimer(void) { return inl(0x608); }
static uint64_t op_ipi(void)
{
	unsigned before = pongs;
	apic_send_ipi(1, 0x60);
	while (pongs == before)
		safe_halt();
	cli();
	return 0;
}

static void row(const char *name, uint64_t (*op)(void), unsigned n, unsigned div)
{
	uint64_t r[ROUNDS];
	for (int k = 0; k < ROUNDS; k++) {
		uint64_t t0 = rdtsc();
		for (unsigned i = 0; i < n; i++)
			op();
		r[k] = (rdtsc() - t0) / n / div;
	}
	sort_u64(r, ROUNDS);
	printf("vmexit: %s %lu\n", name, r[ROUNDS / 2]);
}

int main(struct boot_info *bi, const char *cmdline)
{
	(void)cmdline;
	idt_install();
	outb(0x21, 0xFF); /* no legacy PIC interrupts */
	outb(0xA1, 0xFF);
	apic_enable(0);
	row("loop", op_nop, N, 1);
	row("cpuid", op_cpuid, N, 1);
	row("inl_unassigned", op_inl, N, 1);
	row("outl_unassigned", op_outl, N, 1);
	row("mmio_write", op_mmio, N, 1);
	row("elcr", op_elcr, N, 1);
	row("inl_pmtimer", op_pmtimer, N, 1);
	if (bi->ncpus >= 2) {
		idt_set_handler(0x60, ap_isr);
		idt_set_handler(0x61, bsp_isr);
		if (smp_start_aps(1) == 1)
			row("ipi", op_ipi, N / 4, 2);
	}
	return 0;
}

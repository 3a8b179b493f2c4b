/* pcplat - the parts of QEMU's PC that kernels written for `qemu -kernel` rely on, one mode
 * per command line; built as pcplat.flat and run side by side under QEMU and pyvmm.  Every
 * mode finds what it needs the way an OS does (ACPI tables from the RSDP), reports
 * kvm-unit-tests style lines and exits with report_summary()'s status.
 *
 *   ioapic-pit  the PIT through the IOAPIC pin the MADT's interrupt source override names
 *   poweroff    ACPI S5: SLP_TYP from the DSDT's _S5, SLP_EN; the machine must stop
 *   s3          ACPI S3 with the RTC alarm armed; a real-mode stub at the FACS waking
 *               vector checks that RAM was kept and reports
 *   s3-high     ACPI S3 with a waking vector at 1 MiB, out of real mode's reach: the
 *               machine must not resume (pyvmm: a guest crash, status 123)
 *   s3-zero     ACPI S3 with no waking vector (0): likewise
 *   hpet        the HPET from its ACPI table: counter, one-shot, periodic, legacy routing
 *   hpet-storm  the HPET's fastest periodic timer left running while the kernel exits
 *   cpuid-brand the CPU brand string (CPUID 0x80000002-4)
 *   rtc-uip     RTC status A's update-in-progress bit: wait for the next second
 */
#include <pyvmm/guest.h>

#define IOAPIC 0xFEC00000ul
#define VEC_PIT 0x30
#define VEC_HPET 0x31
#define VEC_LEGACY 0x32
#define S3_STUB 0x7000u
#define S3_MARKER 0x6000u
#define S3_MAGIC 0x5ee9c0deu

struct sdt { char sig[4]; uint32_t len; uint8_t rev, csum; char oem[6], table[8]; uint32_t oemrev, creator, crev; } __attribute__((packed));

static struct sdt *find_table(const char *sig)
{
	const uint8_t *rsdp = 0;
	for (uint64_t a = 0xE0000; a < 0x100000; a += 16)
		if (!memcmp((void *)a, "RSD PTR ", 8)) {
			rsdp = (const uint8_t *)a;
			break;
		}
	if (!rsdp)
		return 0;
	struct sdt *rsdt = (struct sdt *)(uint64_t)*(const uint32_t *)(rsdp + 16);
	const uint32_t *entry = (const uint32_t *)(rsdt + 1);
	for (uint32_t i = 0; i < (rsdt->len - sizeof(*rsdt)) / 4; i++) {
		struct sdt *t = (struct sdt *)(uint64_t)entry[i];
		if (!memcmp(t->sig, sig, 4))
			return t;
	}
	return 0;
}

/* The ACPI PM timer (3.579545 MHz) as the FADT describes it: its port, and 24 or 32 bits
 * (flags bit 8, TMR_VAL_EXT: QEMU's is 24 bits and wraps every 4.7 s, pyvmm's 32). */
struct pm_timer {
	uint16_t port;
	uint32_t mask;
};

static struct pm_timer pm_timer_port(void)
{
	struct pm_timer t = {0, 0xffffffu};
	struct sdt *fadt = find_table("FACP");
	if (fadt) {
		t.port = (uint16_t)*(uint32_t *)((uint8_t *)fadt + 76);
		if (*(uint32_t *)((uint8_t *)fadt + 112) & (1u << 8))
			t.mask = 0xffffffffu;
	}
	return t;
}

/* A deadline in PM timer ticks, so the waits are time, not loop counts; the ticks are
 * summed reading by reading, so a 24-bit counter's wrap is no jump (poll at least every 4 s) */
struct deadline {
	struct pm_timer t;
	uint32_t last;
	uint64_t ticks, limit;
};

static struct deadline deadline_ms(struct pm_timer t, unsigned ms)
{
	struct deadline d = {t, inl(t.port) & t.mask, 0, (uint64_t)ms * 3580u};
	return d;
}

static int expired(struct deadline *d)
{
	uint32_t now = inl(d->t.port) & d->t.mask;
	d->ticks += (now - d->last) & d->t.mask;
	d->last = now;
	return d->ticks >= d->limit;
}

static void ioapic_route(unsigned pin, uint8_t vector, int masked)
{
	mmio_write32(IOAPIC, 0x10 + 2 * pin + 1);
	mmio_write32(IOAPIC + 0x10, 0); /* destination APIC 0 */
	mmio_write32(IOAPIC, 0x10 + 2 * pin);
	mmio_write32(IOAPIC + 0x10, vector | (masked ? 1u << 16 : 0)); /* fixed, edge, high */
}

static volatile unsigned pit_ticks, hpet_ticks, legacy_ticks;
static void pit_isr(struct ex_regs *r) { (void)r; pit_ticks++; apic_eoi(); }
static void hpet_isr(struct ex_regs *r) { (void)r; hpet_ticks++; apic_eoi(); }
static void legacy_isr(struct ex_regs *r) { (void)r; legacy_ticks++; apic_eoi(); }

static int wait_count(volatile unsigned *count, unsigned want, struct pm_timer pm, unsigned ms)
{
	struct deadline d = deadline_ms(pm, ms);
	while (*count < want && !expired(&d))
		safe_halt();
	cli();
	return *count >= want;
}

/* the GSI ISA IRQ `irq` arrives on, per the MADT's interrupt source overrides */
static unsigned isa_gsi(struct sdt *madt, unsigned irq)
{
	uint8_t *p = (uint8_t *)(madt + 1) + 8, *end = (uint8_t *)madt + madt->len;
	for (; p + 2 <= end && p[1]; p += p[1])
		if (p[0] == 2 && p[3] == irq)
			return *(uint32_t *)(p + 4);
	return irq;
}

static void ioapic_pit(void)
{
	struct sdt *madt = find_table("APIC");
	report(madt != 0, "MADT present");
	if (!madt)
		return;
	report(*(uint32_t *)((uint8_t *)madt + 40) & 1, "MADT says a legacy PIC is present (PCAT_COMPAT)");
	unsigned pin = isa_gsi(madt, 0);
	report(pin == 2, "interrupt source override: ISA IRQ 0 on GSI %u", pin);
	struct pm_timer pm = pm_timer_port();
	idt_set_handler(VEC_PIT, pit_isr);
	apic_enable(0);
	ioapic_route(pin, VEC_PIT, 0);
	outb(0x43, 0x34); /* PIT channel 0, mode 2, 1 kHz */
	outb(0x40, 1193 & 0xff);
	outb(0x40, 1193 >> 8);
	int ok = wait_count(&pit_ticks, 5, pm, 2000); /* before reading the count it waited for */
	report(ok, "PIT IRQ 0 through IOAPIC pin %u (at least 5 ticks)", pin);
	ioapic_route(pin, VEC_PIT, 1);
}

/* the SLP_TYP of an \_Sx package in the DSDT: Name(_Sx_, Package() {typ, ...}) */
static int sleep_type(const char *name)
{
	struct sdt *fadt = find_table("FACP");
	if (!fadt)
		return -1;
	struct sdt *dsdt = (struct sdt *)(uint64_t)*(uint32_t *)((uint8_t *)fadt + 40);
	uint8_t *p = (uint8_t *)(dsdt + 1), *end = (uint8_t *)dsdt + dsdt->len;
	for (; p + 8 < end; p++) {
		if (memcmp(p, name, 4) || p[4] != 0x12)
			continue;
		uint8_t *el = p + 5;
		el += 1 + (el[0] >> 6); /* PkgLength */
		el += 1;                /* NumElements */
		if (el[0] == 0x00 || el[0] == 0x01)
			return el[0];   /* ZeroOp, OneOp */
		if (el[0] == 0x0a)
			return el[1];   /* BytePrefix */
		return -1;
	}
	return -1;
}

static uint16_t pm1a(int offset)
{
	struct sdt *fadt = find_table("FACP");
	return (uint16_t)(*(uint32_t *)((uint8_t *)fadt + offset));
}

static void poweroff(void)
{
	int typ = sleep_type("_S5_");
	report(typ >= 0, "DSDT has _S5 (SLP_TYP %d)", typ);
	if (typ < 0)
		return;
	printf("poweroff: SLP_TYP %d | SLP_EN\n", typ);
	struct pm_timer pm = pm_timer_port();
	outw(pm1a(64), (uint16_t)((typ << 10) | (1 << 13)));
	/* a machine may take a while to act on SLP_EN (QEMU's power-off is a request its main
	 * loop serves later, late on a loaded host): only still running after 5 s is a failure */
	struct deadline d = deadline_ms(pm, 5000);
	while (!expired(&d))
		cpu_relax();
	report_fail("still running 5 s after ACPI S5");
}

/* ---- S3: a real-mode stub runs at the waking vector (CS = 0x700, IP = 0) ---- */
extern char s3_stub_start[], s3_stub_end[];
__asm__(".pushsection .text.s3stub, \"ax\"\n"
	".code16\n"
	".globl s3_stub_start\n"
	"s3_stub_start:\n"
	"	cli\n"
	"	xor %ax, %ax\n"
	"	mov %ax, %ds\n"
	"	mov $(s3_ok - s3_stub_start), %si\n"
	"	cmpl $" "0x5ee9c0de" ", " "0x6000" "\n" /* S3_MAGIC at S3_MARKER: RAM was kept */
	"	je 1f\n"
	"	mov $(s3_bad - s3_stub_start), %si\n"
	"1:	mov %cs:(%si), %al\n"
	"	test %al, %al\n"
	"	jz 3f\n"
	"	mov %al, %bl\n"
	"2:	mov $0x3fd, %dx\n"
	"	in %dx, %al\n"
	"	test $0x20, %al\n"
	"	jz 2b\n"
	"	mov $0x3f8, %dx\n"
	"	mov %bl, %al\n"
	"	out %al, %dx\n"
	"	inc %si\n"
	"	jmp 1b\n"
	"3:	xor %ax, %ax\n"
	"	cmpl $0x5ee9c0de, 0x6000\n"
	"	je 4f\n"
	"	inc %ax\n"
	"4:	mov $0xf4, %dx\n"
	"	out %ax, %dx\n" /* isa-debug-exit: 0 passed, 1 failed */
	"5:	hlt\n"
	"	jmp 5b\n"
	"s3_ok: .asciz \"s3: resumed at the waking vector\\nPASS: s3: RAM kept across S3\\nSUMMARY: 1 tests\\n\"\n"
	"s3_bad: .asciz \"s3: resumed at the waking vector\\nFAIL: s3: RAM lost across S3\\nSUMMARY: 1 tests, 1 unexpected failures\\n\"\n"
	".globl s3_stub_end\n"
	"s3_stub_end:\n"
	".code64\n"
	".popsection\n");

static uint8_t cmos(uint8_t reg) { outb(0x70, reg); return inb(0x71); }
static void cmos_set(uint8_t reg, uint8_t v) { outb(0x70, reg); outb(0x71, v); }
static uint8_t bcd_add(uint8_t bcd, unsigned n, unsigned mod, int *carry)
{
	unsigned v = (bcd >> 4) * 10 + (bcd & 15) + n;
	*carry = v >= mod;
	v %= mod;
	return (uint8_t)(((v / 10) << 4) | (v % 10));
}

static void s3(uint32_t vector)
{
	int typ = sleep_type("_S3_");
	if (typ < 0) {
		report_skip("no _S3 in the DSDT: this machine does not offer S3");
		return;
	}
	struct sdt *fadt = find_table("FACP");
	uint32_t *facs = (uint32_t *)(uint64_t)*(uint32_t *)((uint8_t *)fadt + 36);
	report(!memcmp(facs, "FACS", 4), "FADT points at a FACS");
	memcpy((void *)(uint64_t)S3_STUB, s3_stub_start, (size_t)(s3_stub_end - s3_stub_start));
	*(volatile uint32_t *)(uint64_t)S3_MARKER = S3_MAGIC;
	facs[3] = vector; /* firmware waking vector */
	while (cmos(0x0a) & 0x80) /* wait out an update in progress */
		cpu_relax();
	int c1, c2, c3;
	uint8_t sec = bcd_add(cmos(0x00), 2, 60, &c1);
	uint8_t min = bcd_add(cmos(0x02), (unsigned)c1, 60, &c2);
	uint8_t hour = bcd_add(cmos(0x04), (unsigned)c2, 24, &c3);
	cmos_set(0x01, sec);
	cmos_set(0x03, min);
	cmos_set(0x05, hour);
	cmos_set(0x0b, cmos(0x0b) | 0x20); /* AIE */
	(void)cmos(0x0c);
	uint16_t evt = pm1a(56);
	outw(evt + 2, inw(evt + 2) | (1 << 10)); /* PM1a_EN.RTC_EN: the alarm may wake us */
	outw(evt, 0xffff);                         /* clear PM1a_STS */
	printf("s3: suspending, RTC alarm at %02x:%02x:%02x\n", hour, min, sec);
	outw(pm1a(64), (uint16_t)((typ << 10) | (1 << 13)));
	report_fail("still running after ACPI S3");
}

/* ---- HPET ---- */
#define HPET_CONF 0x10
#define HPET_STS 0x20
#define HPET_COUNTER 0xf0
#define HPET_TN(n) (0x100 + 0x20 * (n))

static uint64_t hpet_base;
static uint64_t hpet_rd(unsigned off) { return *(volatile uint64_t *)(hpet_base + off); }
static void hpet_wr(unsigned off, uint64_t v) { *(volatile uint64_t *)(hpet_base + off) = v; }

static void hpet(void)
{
	struct sdt *t = find_table("HPET");
	report(t != 0, "ACPI HPET table present");
	if (!t)
		return;
	hpet_base = *(uint64_t *)((uint8_t *)t + 44);
	uint64_t cap = hpet_rd(0);
	uint32_t period_fs = (uint32_t)(cap >> 32);
	unsigned ntimers = (unsigned)((cap >> 8) & 0x1f) + 1;
	report_info("HPET at %lx: %u timers, period %u fs, legacy %s", hpet_base, ntimers,
		    period_fs, cap & (1 << 15) ? "capable" : "no");
	uint64_t ticks_per_ms = 1000000000000ull / period_fs;
	struct pm_timer pm = pm_timer_port();
	hpet_wr(HPET_CONF, 0);
	hpet_wr(HPET_COUNTER, 0);
	hpet_wr(HPET_CONF, 1);
	struct deadline d = deadline_ms(pm, 2);
	while (!expired(&d))
		cpu_relax();
	uint64_t c1 = hpet_rd(HPET_COUNTER);
	report(c1 > ticks_per_ms, "main counter runs");
	report_info("%lu ticks in >= 2 ms", c1);

	idt_set_handler(VEC_HPET, hpet_isr);
	idt_set_handler(VEC_LEGACY, legacy_isr);
	apic_enable(0);
	uint64_t tn = hpet_rd(HPET_TN(0));
	uint32_t routes = (uint32_t)(tn >> 32);
	unsigned pin = 0;
	for (int b = 23; b >= 0; b--)
		if (routes & (1u << b)) {
			pin = (unsigned)b;
			break;
		}
	report(routes != 0, "timer 0 can be routed to the IOAPIC");
	report_info("timer 0 routes %x, using IOAPIC pin %u", routes, pin);
	ioapic_route(pin, VEC_HPET, 0);
	/* one-shot: 1 ms from now, edge-triggered, interrupts on, routed to `pin` */
	hpet_wr(HPET_TN(0), (tn & ~0x3e0eull) | (1 << 2) | ((uint64_t)pin << 9));
	hpet_wr(HPET_TN(0) + 8, hpet_rd(HPET_COUNTER) + ticks_per_ms);
	report(wait_count(&hpet_ticks, 1, pm, 2000), "one-shot timer 0 interrupt");
	/* periodic, 1 ms */
	if (tn & (1 << 4)) {
		hpet_ticks = 0;
		hpet_wr(HPET_TN(0), (tn & ~0x3e0eull) | (1 << 2) | (1 << 3) | (1 << 6) | ((uint64_t)pin << 9));
		hpet_wr(HPET_TN(0) + 8, hpet_rd(HPET_COUNTER) + ticks_per_ms);
		hpet_wr(HPET_TN(0) + 8, ticks_per_ms);
		int ok = wait_count(&hpet_ticks, 5, pm, 3000);
		report(ok, "periodic timer 0 (at least 5 interrupts)");
	} else {
		report_skip("timer 0 has no periodic mode");
	}
	hpet_wr(HPET_TN(0), tn & ~0x3e0eull);
	ioapic_route(pin, VEC_HPET, 1);
	/* legacy replacement: timer 0 on ISA IRQ 0, which the MADT puts on a GSI */
	if (cap & (1 << 15)) {
		struct sdt *madt = find_table("APIC");
		unsigned gsi = madt ? isa_gsi(madt, 0) : 2;
		ioapic_route(gsi, VEC_LEGACY, 0);
		hpet_wr(HPET_CONF, 3);
		hpet_wr(HPET_TN(0), (tn & ~0x3e0eull) | (1 << 2) | (1 << 3) | (1 << 6));
		hpet_wr(HPET_TN(0) + 8, hpet_rd(HPET_COUNTER) + ticks_per_ms);
		hpet_wr(HPET_TN(0) + 8, ticks_per_ms);
		int ok = wait_count(&legacy_ticks, 3, pm, 3000);
		report(ok, "legacy replacement: timer 0 on IRQ 0 (GSI %u, at least 3 interrupts)", gsi);
		hpet_wr(HPET_TN(0), tn & ~0x3e0eull);
		hpet_wr(HPET_CONF, 0);
		ioapic_route(gsi, VEC_LEGACY, 1);
	}
	hpet_wr(HPET_CONF, 0);
}

/* timer 0 periodic at one tick (the device clamps it to its shortest period), interrupts
 * on but masked at the IOAPIC, still firing when main() returns and the machine ends */
static void hpet_storm(void)
{
	struct sdt *t = find_table("HPET");
	report(t != 0, "ACPI HPET table present");
	if (!t)
		return;
	hpet_base = *(uint64_t *)((uint8_t *)t + 44);
	uint64_t tn = hpet_rd(HPET_TN(0));
	hpet_wr(HPET_CONF, 0);
	hpet_wr(HPET_COUNTER, 0);
	hpet_wr(HPET_TN(0), (tn & ~0x3e0eull) | (1 << 2) | (1 << 3) | (1 << 6) | (2ull << 9));
	hpet_wr(HPET_TN(0) + 8, 1);
	hpet_wr(HPET_TN(0) + 8, 1);
	hpet_wr(HPET_CONF, 1);
	struct deadline d = deadline_ms(pm_timer_port(), 20);
	while (!expired(&d))
		cpu_relax();
	report(hpet_rd(HPET_COUNTER) != 0, "HPET running, timer 0 periodic");
}

static void cpuid_brand(void)
{
	uint32_t r[12], max;
	__asm__ volatile("cpuid" : "=a"(max) : "a"(0x80000000u) : "ebx", "ecx", "edx");
	report(max >= 0x80000004u, "extended leaves up to %x", max);
	for (uint32_t i = 0; i < 3; i++)
		__asm__ volatile("cpuid" : "=a"(r[4 * i]), "=b"(r[4 * i + 1]), "=c"(r[4 * i + 2]), "=d"(r[4 * i + 3])
				 : "a"(0x80000002u + i), "c"(0));
	char brand[49];
	memcpy(brand, r, 48);
	brand[48] = 0;
	const char *b = brand;
	while (*b == ' ')
		b++;
	int printable = *b != 0;
	for (const char *p = b; *p; p++)
		printable &= *p >= 0x20 && *p < 0x7f;
	report_info("brand string \"%s\"", b);
	report(printable, "CPU brand string is set");
}

static void rtc_uip(void)
{
	struct pm_timer pm = pm_timer_port();
	struct deadline d = deadline_ms(pm, 6000);
	uint8_t before = 0xff;
	int seen_up = 0, seen_down = 0;
	while (!expired(&d)) { /* a loaded host may make us miss a window */
		uint8_t sec = cmos(0x00);
		if (cmos(0x0a) & 0x80) {
			seen_up = 1;
			break;
		}
		before = sec; /* the second that is about to end */
	}
	report(seen_up, "status A update-in-progress goes 1");
	d.limit += 1000ull * 3580u;
	while (seen_up && !expired(&d))
		if (!(cmos(0x0a) & 0x80)) {
			seen_down = 1;
			break;
		}
	report(seen_down, "and back to 0 after the update");
	uint8_t after = cmos(0x00);
	report(seen_down && after != before, "the update advanced the seconds");
	report_info("seconds %02x -> %02x", before, after);
}

int main(struct boot_info *bi, const char *cmdline)
{
	(void)bi;
	idt_install();
	report_prefix_push(cmdline);
	if (!strcmp(cmdline, "ioapic-pit"))
		ioapic_pit();
	else if (!strcmp(cmdline, "poweroff"))
		poweroff();
	else if (!strcmp(cmdline, "s3"))
		s3(S3_STUB);
	else if (!strcmp(cmdline, "s3-high"))
		s3(0x100000u);
	else if (!strcmp(cmdline, "s3-zero"))
		s3(0);
	else if (!strcmp(cmdline, "hpet"))
		hpet();
	else if (!strcmp(cmdline, "hpet-storm"))
		hpet_storm();
	else if (!strcmp(cmdline, "cpuid-brand"))
		cpuid_brand();
	else if (!strcmp(cmdline, "rtc-uip"))
		rtc_uip();
	else
		report_fail("unknown mode \"%s\"", cmdline);
	report_prefix_pop();
	return report_summary();
}

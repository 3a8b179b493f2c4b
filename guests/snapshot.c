/* snapshot - a guest that would notice a bad restore.  GUEST_SYNC(1) is the snapshot point;
 * what it reports after it depends on state from before it: a counter in RAM, a LAPIC
 * timer armed before the sync (its count and mode), the UART's scratch register, the AP's
 * registers and its place in a loop, the PIT-free TSC order, a page written by the host.
 *   (empty)   run; GUEST_SYNC(2, counter, ticks, scratch, ap_value); GUEST_SYNC(3, ap_seen)
 *   iters N   the same, N loop iterations after the sync instead of 1000
 *   fuzz      after the sync: GUEST_SYNC(4, f(host_page[0])) and exit (bench/snapshot.py's loop)
 *   dirty N   after the sync: write N pages, GUEST_SYNC(5, N) and exit (restore costs) */
#include <pyvmm/guest.h>

volatile uint64_t counter;
volatile uint64_t host_page[512] __attribute__((aligned(4096))); /* the host may write here */
static volatile int ticks;
static volatile uint32_t go;
static volatile uint64_t ap_value, ap_seen;
static volatile uint8_t dirty_area[1024 * 4096] __attribute__((aligned(4096)));

static void timer_isr(struct ex_regs *r)
{
	(void)r;
	ticks++;
	apic_eoi();
}

void ap_main(uint32_t index)
{
	uint64_t mine = 0x1000 + index; /* lives in the AP's registers across the snapshot */
	ap_value = mine;
	__atomic_add_fetch(&ap_started, 1, __ATOMIC_SEQ_CST);
	while (!go)
		mine += 3;
	ap_seen = mine;
	for (;;)
		__asm__ volatile("cli; hlt");
}

int main(struct boot_info *bi, const char *cmdline)
{
	uint64_t iters = 1000;
	if (!strncmp(cmdline, "iters ", 6))
		iters = parse_u64(cmdline + 6);
	idt_install();
	idt_catch_faults();
	idt_set_handler(0x40, timer_isr);
	if (bi->ncpus > 1 && smp_start_aps(1) != 1)
		return 3;
	while (bi->ncpus > 1 && !ap_value)
		;
	outb(0x3f8 + 7, 0x5a);              /* UART scratch register */
	counter = 41;
	apic_enable(0);
	apic_write(APIC_TDCR, 0xB);         /* divide by 1 */
	apic_write(APIC_LVTT, 0x40);        /* one-shot, vector 0x40, masked by IF=0 for now */
	apic_write(APIC_TMICT, 20000000);   /* 20 ms at KVM's 1 GHz APIC bus */
	GUEST_SYNC(1, counter);             /* the snapshot point */
	if (!strcmp(cmdline, "fuzz")) {
		uint64_t x = host_page[0];
		GUEST_SYNC(4, x * 3 + counter, x ^ 0x5555);
		return 0;
	}
	if (!strncmp(cmdline, "dirty ", 6)) {
		uint64_t n = parse_u64(cmdline + 6);
		for (uint64_t i = 0; i < n && i < 1024; i++)
			dirty_area[i * 4096] = (uint8_t)(i + 1);
		GUEST_SYNC(5, n);
		return 0;
	}
	for (uint64_t i = 0; i < iters; i++)
		counter++;
	uint64_t end = rdtsc() + 26000000000ull; /* ~10 s: the timer must fire long before */
	while (!ticks && rdtsc() < end)
		safe_halt();
	__asm__ volatile("cli");
	GUEST_SYNC(2, counter, (uint64_t)ticks, inb(0x3f8 + 7), ap_value, host_page[0]);
	go = 1;
	while (bi->ncpus > 1 && !ap_seen)
		;
	GUEST_SYNC(3, ap_seen != 0, (ap_seen - ap_value) % 3);
	return 0;
}

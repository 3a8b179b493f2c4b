/* irq - interrupts through KVM's in-kernel irqchip (seed: KVM_CREATE_IRQCHIP's PIC and
 * IOAPIC, kvm_set_irq, kvm_apic_set_irq).  The command line picks one:
 *
 *   ioapic   pin 5 -> vector 0x50; at sync 1 the host raises KVM_IRQ_LINE 5
 *   irqfd    pin 10 -> vector 0x51; at sync 1 the host writes the eventfd bound to GSI 10
 *   pit      PIT channel 0 at 1 kHz -> IRQ0 (IOAPIC pin 0 and 2: KVM's default routing
 *            puts IRQ0 on pin 0, an ISA override would say 2), counts 5 ticks
 *   ipi      the BSP starts the AP; 5 IPI ping-pongs BSP -> AP -> BSP (vectors 0x60/0x61)
 *
 * Sync 2: interrupts taken, TSC cycles from the trigger (or for the whole ping-pong).
 */
#include <pyvmm/guest.h>

#define IOAPIC 0xFEC00000ul
static volatile unsigned got, pongs, pings;

static void ioapic_route(unsigned pin, uint8_t vector, uint8_t dest)
{
	mmio_write32(IOAPIC, 0x10 + 2 * pin + 1);
	mmio_write32(IOAPIC + 0x10, (uint32_t)dest << 24);
	mmio_write32(IOAPIC, 0x10 + 2 * pin);
	mmio_write32(IOAPIC + 0x10, vector); /* fixed, physical, edge, active high, unmasked */
}

static void isr(struct ex_regs *r)
{
	(void)r;
	got++;
	apic_eoi();
}

static void ap_isr(struct ex_regs *r) /* on the AP: a ping; answer with a pong */
{
	(void)r;
	pings++;
	apic_eoi();
	apic_send_ipi(0, 0x61);
}

static void bsp_isr(struct ex_regs *r)
{
	(void)r;
	pongs++;
	apic_eoi();
}

static int wait_count(volatile unsigned *c, unsigned n)
{
	uint64_t end = rdtsc() + 2600000000ull; /* ~1 s */
	while (*c < n && rdtsc() < end)
		safe_halt();
	cli();
	return *c >= n;
}

void ap_main(uint32_t index)
{
	(void)index;
	idt_install(); /* the IDT is shared; the AP loads IDTR itself */
	apic_enable(0);
	__atomic_add_fetch(&ap_started, 1, __ATOMIC_SEQ_CST);
	for (;;)
		safe_halt();
}

int main(struct boot_info *bi, const char *cmdline)
{
	idt_install();
	outb(0x21, 0xFF); /* mask the PIC: its vectors were never programmed */
	outb(0xA1, 0xFF);
	apic_enable(0);
	idt_set_handler(0x50, isr);
	idt_set_handler(0x51, isr);
	idt_set_handler(0x52, isr);
	if (!strcmp(cmdline, "ioapic") || !strcmp(cmdline, "irqfd")) {
		int fd = cmdline[1] == 'r';
		ioapic_route(fd ? 10 : 5, fd ? 0x51 : 0x50, 0);
		GUEST_SYNC(1);
		uint64_t t0 = rdtsc();
		int ok = wait_count(&got, 1);
		GUEST_SYNC(2, got, rdtsc() - t0);
		GUEST_ASSERT(ok);
	} else if (!strcmp(cmdline, "pit")) {
		ioapic_route(0, 0x52, 0);
		ioapic_route(2, 0x52, 0);
		outb(0x43, 0x34);          /* channel 0, lo/hi, mode 2 (rate generator) */
		outb(0x40, 1193 & 0xFF);   /* 1.193182 MHz / 1193 = 1 kHz */
		outb(0x40, 1193 >> 8);
		uint64_t t0 = rdtsc();
		int ok = wait_count(&got, 5);
		outb(0x43, 0x30);          /* mode 0, no reload: stop */
		GUEST_SYNC(2, got, rdtsc() - t0);
		GUEST_ASSERT(ok);
	} else if (!strcmp(cmdline, "ipi")) {
		GUEST_ASSERT(bi->ncpus >= 2);
		idt_set_handler(0x60, ap_isr);
		idt_set_handler(0x61, bsp_isr);
		GUEST_ASSERT_EQ(smp_start_aps(1), 1);
		uint64_t t0 = rdtsc();
		for (unsigned i = 0; i < 5; i++) {
			apic_send_ipi(1, 0x60);
			GUEST_ASSERT(wait_count(&pongs, i + 1));
		}
		GUEST_SYNC(2, pongs, (rdtsc() - t0) / 5, pings);
	} else {
		GUEST_PRINTF("irq: unknown mode \"%s\"", cmdline);
		return 99;
	}
	GUEST_DONE();
}

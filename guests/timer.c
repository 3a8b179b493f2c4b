/* timer - LAPIC timers (seed: LAPIC timer expiry, apic_timer_fn; HLT blocking until a
 * timer is pending, kvm_vcpu_block).  The command line: MODE APIC N [PERIOD_US]
 *   MODE  oneshot | periodic | deadline      APIC  xapic | x2apic
 * Every wait is STI;HLT.  Sync 1: mode, N ticks, then min / median / max of the measured
 * quantity in TSC cycles: the lateness after the programmed expiry for one-shot and
 * deadline, the interval between ticks for periodic.  The host writes the TSC rate
 * (KVM_GET_TSC_KHZ / 1000) into tsc_per_us before the run.
 */
#include <pyvmm/guest.h>

#define MAXN 64
#define VEC 0x40
static volatile uint64_t stamps[MAXN + 1];
static volatile unsigned ticks;
volatile uint64_t tsc_per_us; /* set by the host */

static void isr(struct ex_regs *r)
{
	(void)r;
	if (ticks <= MAXN)
		stamps[ticks] = rdtsc();
	ticks++;
	apic_eoi();
}

static void wait_for(unsigned n)
{
	while (ticks < n)
		safe_halt();
	cli();
}

int main(struct boot_info *bi, const char *cmdline)
{
	(void)bi;
	idt_install();
	idt_set_handler(VEC, isr);
	const char *a = skip_word(cmdline);
	int x2 = !strncmp(a, "x2apic", 6);
	unsigned n = (unsigned)parse_u64(skip_word(a));
	uint64_t period_us = parse_u64(skip_word(skip_word(a)));
	if (n == 0 || n > MAXN)
		n = 8;
	if (!period_us)
		period_us = 1000;
	GUEST_ASSERT(tsc_per_us != 0);
	apic_enable(x2);
	apic_write(APIC_TDCR, 0xB); /* divide by 1: KVM's APIC bus runs at 1 GHz, count = ns */
	uint64_t v[MAXN], expiry;
	int mode;
	if (!strncmp(cmdline, "periodic", 8)) {
		mode = 2;
		apic_write(APIC_LVTT, VEC | LVTT_PERIODIC);
		apic_write(APIC_TMICT, (uint32_t)(period_us * 1000));
		wait_for(n + 1);
		apic_write(APIC_TMICT, 0);
		for (unsigned i = 0; i < n; i++)
			v[i] = stamps[i + 1] - stamps[i];
	} else {
		mode = !strncmp(cmdline, "deadline", 8) ? 3 : 1;
		apic_write(APIC_LVTT, VEC | (mode == 3 ? LVTT_TSC_DEADLINE : 0));
		for (unsigned i = 0; i < n; i++) {
			uint64_t now = rdtsc();
			expiry = now + period_us * tsc_per_us;
			if (mode == 3)
				wrmsr(MSR_TSC_DEADLINE, expiry);
			else
				apic_write(APIC_TMICT, (uint32_t)(period_us * 1000));
			wait_for(i + 1);
			GUEST_ASSERT(stamps[i] >= now); /* never before it was armed */
			v[i] = stamps[i] > expiry ? stamps[i] - expiry : 0;
		}
	}
	sort_u64(v, n);
	GUEST_SYNC(1, mode, n, v[0], v[n / 2], v[n - 1]);
	GUEST_DONE();
}

/* probe - one host-feature probe per command line, for `pyvmm doctor`.
 * Each mode ends with GUEST_SYNC(1, result) (1 = works) then GUEST_DONE, or the run
 * ends otherwise (emulation failure, no interrupt, timeout): that is the answer too.
 *
 *   insn NAME     execute one instruction class at CPL0 (#UD/#GP caught: result 0)
 *   pcid          set CR4.PCIDE                  1g-pages  read through a 1 GiB page
 *   xapic-timer   one-shot LAPIC timer, xAPIC    x2apic    enable x2APIC, read its ID MSR
 *   tsc-deadline  TSC-deadline timer             nop       GUEST_DONE at once
 *   smp           start every AP by INIT/SIPI    touch ADDR N  write one byte in N pages
 *   cpuid LEAF    GUEST_SYNC(2, eax, ebx, ecx, edx) of CPUID(LEAF, 0), then result 1
 *
 * `pyvmm doctor` runs only this guest; it ships in the wheel (pyvmm/probes/probe.elf).
 */
#include <pyvmm/guest.h>

static volatile int ticks;

/* Entered by the host in 32-bit protected mode, paging off, CR3/CR4 prepared (pyvmm
 * doctor's paging32-pse and pae32 probes): turn paging on; debug-exit 1 if that worked.
 * A #GP here has no IDT to go to, so a refusal ends as a triple fault. */
__asm__(".text\n.code32\n.globl pg32_probe\npg32_probe:\n"
	"mov %cr0, %eax\nor $0x80000000, %eax\nmov %eax, %cr0\njmp 1f\n"
	"1: mov $1, %eax\nout %eax, $0xf4\n2: hlt\njmp 2b\n.code64\n");

static void timer_isr(struct ex_regs *r)
{
	(void)r;
	ticks++;
	apic_eoi();
}

static void skip_one_byte(struct ex_regs *r) { (void)r; } /* int3 already points past itself */

#define TRY(insn) GUEST_TRY(insn, : : "rax", "rcx", "rdx", "memory")

static int insn(const char *name)
{
	if (!strcmp(name, "popcnt"))
		return TRY("mov $0xff, %%eax; popcnt %%eax, %%ecx");
	if (!strcmp(name, "sse"))
		return TRY("pxor %%xmm0, %%xmm0");
	if (!strcmp(name, "xgetbv"))
		return TRY("mov %%cr4, %%rax; bts $18, %%rax; mov %%rax, %%cr4; xor %%ecx, %%ecx; xgetbv");
	if (!strcmp(name, "int3")) {
		idt_set_handler(3, skip_one_byte);
		return TRY("int3");
	}
	if (!strcmp(name, "int-n")) {
		idt_set_handler(0x80, skip_one_byte);
		return TRY("int $0x80");
	}
	if (!strcmp(name, "vmcall"))
		return TRY("vmcall");
	if (!strcmp(name, "rdtscp"))
		return TRY("rdtscp");
	return -1;
}

static int wait_ticks(int n)
{
	uint64_t end = rdtsc() + 2600000000ull / 10; /* ~100 ms at this host's 2.6 GHz */
	while (ticks < n && rdtsc() < end)
		safe_halt();
	cli();
	return ticks >= n;
}

volatile uint64_t probe_watched;

int main(struct boot_info *bi, const char *cmdline)
{
	idt_install();
	idt_catch_faults();
	idt_set_handler(0x40, timer_isr);
	int res = -1;
	if (!strncmp(cmdline, "insn ", 5))
		res = insn(cmdline + 5);
	else if (!strcmp(cmdline, "pcid"))
		res = TRY("mov %%cr4, %%rax; bts $17, %%rax; mov %%rax, %%cr4");
	else if (!strcmp(cmdline, "1g-pages")) {
		uint64_t *pml4 = (uint64_t *)(read_cr3() & ~0xFFFul);
		uint64_t *pdpt = (uint64_t *)(pml4[0] & 0x000FFFFFFFFFF000ul);
		pdpt[8] = 0x83; /* VA 8 GiB -> PA 0, one 1 GiB page */
		volatile uint64_t *probe = (volatile uint64_t *)(0x200000000ul + 0x1000);
		*(volatile uint64_t *)0x1000 = 0x1122334455667788ul;
		uint64_t v = 0;
		res = GUEST_TRY("mov (%1), %0", "+r"(v) : "r"(probe) : "memory") &&
		      v == 0x1122334455667788ul;
		pdpt[8] = 0;
	} else if (!strcmp(cmdline, "xapic-timer") || !strcmp(cmdline, "x2apic-timer")) {
		apic_enable(cmdline[1] == '2');
		apic_write(APIC_TDCR, 0xB); /* divide by 1 */
		apic_write(APIC_LVTT, 0x40);
		apic_write(APIC_TMICT, 1000000); /* 1 ms at the 1 GHz KVM APIC bus */
		res = wait_ticks(1);
	} else if (!strcmp(cmdline, "tsc-deadline")) {
		apic_enable(0);
		apic_write(APIC_LVTT, 0x40 | LVTT_TSC_DEADLINE);
		wrmsr(MSR_TSC_DEADLINE, rdtsc() + 2600000);
		res = wait_ticks(1);
	} else if (!strcmp(cmdline, "x2apic")) {
		apic_enable(1);
		res = apic_read(APIC_VERSION) != 0;
	} else if (!strcmp(cmdline, "nop")) {
		res = 1;
	} else if (!strcmp(cmdline, "store")) {
		probe_watched = 0x1234; /* the hw-watchpoint probe's DR0 watches this store */
		res = 1;
	} else if (!strncmp(cmdline, "cpuid ", 6)) {
		uint32_t a, b, c, d;
		__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d)
				 : "a"((uint32_t)parse_u64(cmdline + 6)), "c"(0));
		GUEST_SYNC(2, a, b, c, d);
		res = 1;
	} else if (!strcmp(cmdline, "smp")) {
		res = smp_start_aps(bi->ncpus - 1) == bi->ncpus - 1;
	} else if (!strncmp(cmdline, "touch ", 6)) {
		volatile uint8_t *p = (volatile uint8_t *)parse_u64(cmdline + 6);
		for (uint64_t i = parse_u64(skip_word(cmdline + 6)); i; i--, p += 4096)
			*p = 1;
		res = 1;
	}
	GUEST_SYNC(1, (uint64_t)res, fault_vector);
	GUEST_DONE();
}

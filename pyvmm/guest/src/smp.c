/* smp.c - starting the application processors: INIT + SIPI to the trampoline (entry.S). */
#include <pyvmm/rt.h>

extern char ap_trampoline[];
extern volatile uint32_t ap_cr3;
volatile uint32_t ap_started;

__attribute__((weak)) void ap_main(uint32_t index)
{
	(void)index;
	__atomic_add_fetch(&ap_started, 1, __ATOMIC_SEQ_CST);
	for (;;)
		__asm__ volatile("cli; hlt");
}

extern char __ap_tramp_lma[], __ap_tramp_size[];

unsigned smp_start_aps(unsigned expected)
{
	/* .flat builds load the trampoline above 1 MiB: put it where SIPI can start it */
	if ((uintptr_t)__ap_tramp_lma != (uintptr_t)ap_trampoline)
		memcpy(ap_trampoline, __ap_tramp_lma, (size_t)__ap_tramp_size);
	uint64_t cr3;
	__asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
	ap_cr3 = (uint32_t)cr3; /* the VMM keeps its page tables below 4 GiB */
	mmio_write32(LAPIC_BASE + 0xF0, 0x1FF);         /* SVR: APIC software-enabled */
	mmio_write32(LAPIC_BASE + 0x310, 0);
	mmio_write32(LAPIC_BASE + 0x300, 0x000C4500);   /* INIT, all excluding self */
	uint32_t vector = (uint32_t)((uint64_t)ap_trampoline >> 12);
	mmio_write32(LAPIC_BASE + 0x300, 0x000C4600 | vector); /* SIPI */
	for (unsigned spins = 0; spins < 200000 && ap_started < expected; spins++)
		cpu_relax();
	return ap_started;
}

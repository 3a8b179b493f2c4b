/* realmode - a guest that starts in real mode and brings itself to long mode (seed: the
 * mode switches KVM emulates; HOST-KVM.md: real -> PM32 -> long, paging on together with
 * EFER.LME, is the path that works on kvm_pvm).
 *
 * The host starts the BSP in real mode at ap_trampoline (0x8000) with ap_cr3 set to its
 * page tables; the trampoline is the one APs use after SIPI.  Sync 1: CR0 at entry, CR0,
 * CR4 and EFER in long mode.  Sync 2: the same path again on an AP started by SIPI.
 */
#include <pyvmm/guest.h>

extern volatile uint32_t ap_boot_cr0;

static uint64_t read_cr0(void) { uint64_t v; __asm__ volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static uint64_t read_cr4(void) { uint64_t v; __asm__ volatile("mov %%cr4, %0" : "=r"(v)); return v; }

int main(struct boot_info *bi, const char *cmdline)
{
	(void)bi, (void)cmdline;
	GUEST_PRINTF("realmode: entered through the ELF64 convention, not real mode");
	return 1;
}

void ap_main(uint32_t index)
{
	if (index == 0) { /* the BSP, started in real mode by the host */
		uint32_t entry_cr0 = ap_boot_cr0;
		GUEST_SYNC(1, entry_cr0, read_cr0(), read_cr4(), rdmsr(0xC0000080));
		idt_install();
		ap_started = 0;
		/* now an AP takes the same way up, started by INIT/SIPI */
		if (smp_start_aps(1) == 1)
			GUEST_SYNC(2, 1);
		GUEST_DONE();
	}
	GUEST_SYNC(3, ap_boot_cr0, read_cr0());
	__atomic_add_fetch(&ap_started, 1, __ATOMIC_SEQ_CST);
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* cr3 - several address spaces where one virtual address maps to different physical pages
 * (seed: CR3 loads, kvm_mmu_load / the MMU root switch).
 *
 * Sync 1 (per space i): i, the CR3 loaded, the value read at VA.  The host reads CR3 with
 * KVM_GET_SREGS at the same point.  Sync 2: after retargeting space 0's PTE and INVLPG,
 * the value read through the new mapping.
 */
#include <pyvmm/guest.h>

#define SPACES 3
#define VA 0x8000000000ul /* PML4 slot 1: outside the VMM's identity map */

static uint64_t pages[SPACES + 1][512] __attribute__((aligned(4096)));

int main(struct boot_info *bi, const char *cmdline)
{
	(void)bi, (void)cmdline;
	idt_install();
	uint64_t boot_cr3 = read_cr3();
	uint64_t *roots[SPACES];
	for (int i = 0; i < SPACES; i++) {
		pages[i][0] = 0x1111ul * (i + 1);
		roots[i] = pt_clone_root();
		pt_map(roots[i], VA, (uint64_t)pages[i], PTE_RW | PTE_NX);
	}
	for (int i = 0; i < SPACES; i++) {
		write_cr3((uint64_t)roots[i]);
		uint64_t v = *(volatile uint64_t *)VA;
		GUEST_ASSERT_EQ(v, 0x1111ul * (i + 1));
		GUEST_SYNC(1, i, read_cr3(), v);
	}
	write_cr3((uint64_t)roots[0]);
	pages[SPACES][0] = 0xfeed;
	pt_map(roots[0], VA, (uint64_t)pages[SPACES], PTE_RW | PTE_NX);
	invlpg(VA);
	uint64_t v = *(volatile uint64_t *)VA;
	GUEST_ASSERT_EQ(v, 0xfeed);
	GUEST_SYNC(2, v);
	write_cr3(boot_cr3);
	GUEST_DONE();
}

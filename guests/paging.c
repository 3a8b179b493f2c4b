/* paging - page faults (seed: kvm_mmu_page_fault / the TDP MMU on EPT hosts).
 *
 *   Sync 1: N, TSC cycles per page for the first touch and for the re-touch of N pages.
 *   Sync 2-4: a guest #PF handler fixing not-present (read), write-protect (write) and NX
 *             (fetch) faults; args: error code, CR2.
 *   Sync 5: two reads from a guest-physical range with no memslot: the first exits as
 *           MMIO and the host adds a memslot there (demand mapping); the second is RAM.
 *   Sync 6/7: the host clears the dirty log, the guest writes 3 pages, the host reads it.
 */
#include <pyvmm/guest.h>

#define TOUCH_BASE 0x2000000ul   /* 32 MiB: RAM nobody has touched yet */
#define VA 0x8000000000ul
#define DEMAND 0x30000000ul      /* no memslot until the host adds one */
#define LOGGED 0x20000000ul      /* a dirty-logged slot the host adds */

static uint64_t page[512] __attribute__((aligned(4096)));
static uint64_t *root;
static volatile uint64_t pf_err, pf_cr2;
static volatile int pf_count;

static void pf_handler(struct ex_regs *r)
{
	pf_err = r->error_code;
	pf_cr2 = read_cr2();
	pf_count++;
	uint64_t *pte = pt_pte(root, pf_cr2);
	/* fix whatever was wrong: make it present, writable and executable */
	*pte = ((uint64_t)page & PTE_ADDR) | PTE_P | PTE_RW;
	invlpg(pf_cr2);
}

int main(struct boot_info *bi, const char *cmdline)
{
	(void)bi;
	idt_install();
	unsigned n = cmdline[0] ? (unsigned)parse_u64(cmdline) : 64;

	volatile uint8_t *p = (volatile uint8_t *)TOUCH_BASE;
	uint64_t t0 = rdtsc();
	for (unsigned i = 0; i < n; i++)
		p[i * 4096] = 1;
	uint64_t t1 = rdtsc();
	for (unsigned i = 0; i < n; i++)
		p[i * 4096] = 2;
	uint64_t t2 = rdtsc();
	GUEST_SYNC(1, n, (t1 - t0) / n, (t2 - t1) / n);

	root = pt_clone_root();
	write_cr3((uint64_t)root);
	idt_set_handler(14, pf_handler);
	page[0] = 0x5a5a;
	*pt_pte(root, VA) = 0; /* not present */
	uint64_t v = *(volatile uint64_t *)VA;
	GUEST_ASSERT_EQ(v, 0x5a5a);
	GUEST_SYNC(2, pf_err, pf_cr2);

	*pt_pte(root, VA) = ((uint64_t)page & PTE_ADDR) | PTE_P; /* read-only */
	invlpg(VA);
	*(volatile uint64_t *)(VA + 8) = 7;
	GUEST_ASSERT_EQ(page[1], 7);
	GUEST_SYNC(3, pf_err, pf_cr2);

	((volatile uint8_t *)page)[64] = 0xC3; /* ret */
	*pt_pte(root, VA) = ((uint64_t)page & PTE_ADDR) | PTE_P | PTE_RW | PTE_NX;
	invlpg(VA);
	((void (*)(void))(VA + 64))();
	GUEST_SYNC(4, pf_err, pf_cr2);
	GUEST_ASSERT_EQ(pf_count, 3);

	uint64_t first = *(volatile uint64_t *)DEMAND;
	uint64_t second = *(volatile uint64_t *)(DEMAND + 8);
	GUEST_SYNC(5, first, second);

	GUEST_SYNC(6);
	for (int i = 0; i < 3; i++)
		*(volatile uint64_t *)(LOGGED + (uint64_t)(2 * i + 1) * 4096) = i;
	GUEST_SYNC(7);
	GUEST_DONE();
}

#include <pyvmm/idt.h>
#include <pyvmm/pt.h>
#include <pyvmm/rt.h>

#define POOL 64
static uint64_t pool[POOL][512] __attribute__((aligned(4096)));
static unsigned used;

uint64_t *pt_alloc(void)
{
	if (used >= POOL) {
		printf("pt: table pool exhausted\n");
		exit(0x7e);
	}
	return pool[used++]; /* bss: already zero */
}

uint64_t *pt_clone_root(void)
{
	uint64_t *cur = (uint64_t *)(read_cr3() & PTE_ADDR), *n = pt_alloc();
	for (int i = 0; i < 512; i++)
		n[i] = cur[i];
	return n;
}

uint64_t *pt_pte(uint64_t *pml4, uint64_t va)
{
	uint64_t *t = pml4;
	for (int shift = 39; shift > 12; shift -= 9) {
		uint64_t *e = &t[(va >> shift) & 511];
		if (!(*e & PTE_P))
			*e = (uint64_t)pt_alloc() | PTE_P | PTE_RW;
		t = (uint64_t *)(*e & PTE_ADDR);
	}
	return &t[(va >> 12) & 511];
}

void pt_map(uint64_t *pml4, uint64_t va, uint64_t pa, uint64_t flags)
{
	*pt_pte(pml4, va) = (pa & PTE_ADDR) | flags | PTE_P;
}

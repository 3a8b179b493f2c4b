/* pt.h - page-table helpers inside the guest (4-level, 4 KiB pages; Intel SDM vol. 3A 4.5).
 * Tables come from a static pool; guest-physical == guest-virtual for the pool (pyvmm
 * identity-maps RAM), so a table's address is also its physical address. */
#ifndef PYVMM_PT_H
#define PYVMM_PT_H

#include <stdint.h>

#define PTE_P (1ul << 0)
#define PTE_RW (1ul << 1)
#define PTE_US (1ul << 2)
#define PTE_PS (1ul << 7)
#define PTE_NX (1ul << 63)
#define PTE_ADDR 0x000FFFFFFFFFF000ul

uint64_t *pt_alloc(void);                  /* a zeroed 4 KiB table from the pool */
uint64_t *pt_clone_root(void);             /* a new PML4 sharing the current one's entries */
uint64_t *pt_pte(uint64_t *pml4, uint64_t va); /* the PTE for va, creating tables */
void pt_map(uint64_t *pml4, uint64_t va, uint64_t pa, uint64_t flags);

#endif

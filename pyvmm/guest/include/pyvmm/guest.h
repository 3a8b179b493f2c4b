/* pyvmm/guest.h - everything a pyvmm guest uses, in one include (docs/guests.md: pyvmm guest docs).
 *
 *   #include <pyvmm/guest.h>
 *
 *   int main(struct boot_info *bi, const char *cmdline)
 *   {
 *           printf("%u vCPU(s), cmdline \"%s\"\n", bi->ncpus, cmdline);
 *           GUEST_SYNC(1, 42);          // the host's on_sync handlers run here
 *           GUEST_ASSERT_EQ(1 + 1, 2);
 *           GUEST_DONE();               // or: return an exit status
 *   }
 *
 * Build it with `pyvmm guest build -o my.elf my.c` (add --multiboot for a .flat kernel that
 * QEMU's -kernel boots too).  Every header below also stands on its own.
 */
#ifndef PYVMM_GUEST_H
#define PYVMM_GUEST_H

#include "rt.h"    /* boot info, port and MMIO I/O, printf/puts, exit, string helpers, SMP */
#include "ucall.h" /* the test protocol: GUEST_SYNC/ASSERT/ASSERT_EQ/PRINTF/DONE */
#include "idt.h"   /* exceptions: idt_install, idt_set_handler, GUEST_TRY; CR/MSR helpers */
#include "apic.h"  /* local APIC, xAPIC and x2APIC: timers, EOI, IPIs */
#include "pt.h"    /* 4-level page tables: pt_map, pt_pte, pt_clone_root */
#include "report.h" /* kvm-unit-tests style PASS:/FAIL:/SKIP:/SUMMARY: lines */
#include "user.h"   /* user mode (CPL3): GUEST_USER_CALL, GUEST_USER_TRY_CALL */
#include "fuzz.h"   /* fuzz targets: GUEST_FUZZ_INPUT, the coverage map */

#endif

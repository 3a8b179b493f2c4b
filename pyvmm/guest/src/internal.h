/* internal.h - what the runtime's own files share and guests do not see (C and assembly). */
#ifndef PYVMM_RT_INTERNAL_H
#define PYVMM_RT_INTERNAL_H

/* Segment selectors of the runtime's GDT (user.c).  0x08-0x18 are the boot GDT's (loader,
 * entry.S); user data below user code64 is SYSCALL/SYSRET's order (STAR[63:48] = 0x18). */
#define SEL_KERNEL_CS 0x08
#define SEL_KERNEL_DS 0x10
#define SEL_USER_DS 0x23 /* 0x20 | RPL 3 */
#define SEL_USER_CS 0x2b /* 0x28 | RPL 3 */
#define SEL_TSS0 0x30    /* one 16-byte TSS descriptor per vCPU from here */

/* struct user_cpu's fields as user_entry.S reaches them through %gs */
#define UC_SELF 0
#define UC_KERNEL_RSP 8
#define UC_USER_STACK 16
#define UC_RSP0 (32 + 4) /* tss.rsp0: the TSS starts at 32, RSP0 at its offset 4 */

#ifndef __ASSEMBLER__
#include <stdint.h>

#include <pyvmm/idt.h>

void rt_print_lock(void);
void rt_print_unlock(void);

struct tss64 {
	uint32_t reserved0;
	uint64_t rsp[3];
	uint64_t reserved1;
	uint64_t ist[7];
	uint64_t reserved2;
	uint16_t reserved3, iomap_base;
} __attribute__((packed));

/* One per vCPU that has made a user call; GS base points at it (user code never uses GS). */
struct user_cpu {
	struct user_cpu *self;
	uint64_t kernel_rsp;  /* the CPL0 caller's saved context: where a user call returns */
	uint64_t user_stack;  /* top of this vCPU's user stack */
	struct guest_fault *fault; /* GUEST_USER_TRY_CALL's, or 0: faults are reported */
	struct tss64 tss;
	uint32_t fpu_ready;
} __attribute__((aligned(64)));

_Static_assert(__builtin_offsetof(struct user_cpu, tss) == 32, "UC_RSP0");

/* a fault at CPL3 (idt.c): returned to a TRY call, else reported */
__attribute__((noreturn)) void user_fault(struct ex_regs *r);
#endif

#endif

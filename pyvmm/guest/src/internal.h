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
#define MAX_CPUS 64      /* vCPUs that can make user calls */
#define SYS_NOP 4        /* the last system call handled in assembly (user.h's enum) */

/* struct user_cpu's fields as user_entry.S reaches them (through %gs at CPL0, through
 * the block's address at CPL3: its user-mode trampoline finds the block from its stack) */
#define UC_SELF 0
#define UC_KERNEL_RSP 8  /* the caller's stack in a user call: its return address */
#define UC_FRAME0 16     /* &frame[0]: the IRETQ frame into user mode of GUEST_USER_CALL */
#define UC_FRAME1 24     /* &frame[1]: GUEST_USER_TRY_CALL's */
#define UC_FAULT 32      /* GUEST_USER_TRY_CALL's struct guest_fault, or 0 (stored at CPL3) */
#define UC_SAVED 40      /* the caller's RBX, RBP, R12-R15 for the fault path (stored at CPL3) */
#define UC_FRAMES 96     /* struct iret_frame frame[2]: GUEST_USER_CALL's, then TRY's */
#define UC_FRAME_TRY (UC_FRAMES + 40)
#define UC_TSS 176       /* struct tss64 (+ the I/O bitmap) */
#define UC_RSP0 (UC_TSS + 4)
#define UC_SIZE 832      /* sizeof(struct user_cpu) */
#define USER_STACK_SHIFT 14 /* 16 KiB user stack per vCPU */
#define FRAME_RIP 0      /* struct iret_frame */
#define FRAME_RFLAGS 16  /* the caller's RFLAGS, stored there by each call */

#ifndef __ASSEMBLER__
#include <stdint.h>

#include <pyvmm/idt.h>

void rt_print_lock(void);
void rt_print_unlock(void);

/* The ports user code may use itself (the TSS I/O bitmap): the debug-exit port (0xf4,
 * 4 bytes), COM1 (0x3f8-0x3ff) and the ucall port (0x1000-0x1003).  The CPU reads two
 * bytes of the bitmap for each access, so one more byte of ones ends it. */
#define IOMAP_PORTS 0x1010
struct tss64 {
	uint32_t reserved0;
	uint64_t rsp[3];
	uint64_t reserved1;
	uint64_t ist[7];
	uint64_t reserved2;
	uint16_t reserved3, iomap_base;
	uint8_t iomap[IOMAP_PORTS / 8 + 1];
} __attribute__((packed));

struct iret_frame { uint64_t rip, cs, rflags, rsp, ss; };

/* One per vCPU that has made a user call; GS base points at it (user code never uses GS).
 * Only CPL0 code writes it, except fault and saved: the user-mode trampoline stores them
 * (natively: on kvm_pvm each CPL0 store is an emulated instruction). */
struct user_cpu {
	struct user_cpu *self;
	uint64_t kernel_rsp;
	struct iret_frame *frame_ptr[2];
	struct guest_fault *fault;
	uint64_t saved[6];
	uint64_t pad;
	struct iret_frame frame[2];
	struct tss64 tss;
} __attribute__((aligned(64)));

_Static_assert(__builtin_offsetof(struct user_cpu, kernel_rsp) == UC_KERNEL_RSP, "UC_KERNEL_RSP");
_Static_assert(__builtin_offsetof(struct user_cpu, frame_ptr) == UC_FRAME0, "UC_FRAME0");
_Static_assert(__builtin_offsetof(struct user_cpu, fault) == UC_FAULT, "UC_FAULT");
_Static_assert(__builtin_offsetof(struct user_cpu, saved) == UC_SAVED, "UC_SAVED");
_Static_assert(__builtin_offsetof(struct user_cpu, frame) == UC_FRAMES, "UC_FRAMES");
_Static_assert(__builtin_offsetof(struct user_cpu, frame[1]) == UC_FRAME_TRY, "UC_FRAME_TRY");
_Static_assert(__builtin_offsetof(struct iret_frame, rflags) == FRAME_RFLAGS, "FRAME_RFLAGS");
_Static_assert(__builtin_offsetof(struct user_cpu, tss) == UC_TSS, "UC_TSS");
_Static_assert(sizeof(struct user_cpu) == UC_SIZE, "UC_SIZE");

/* a fault at CPL3 (idt.c): returned to a TRY call, else reported */
__attribute__((noreturn)) void user_fault(struct ex_regs *r);
#endif

#endif

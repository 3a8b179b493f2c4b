/* user.h - running guest code at CPL3 (64-bit user mode), where kvm_pvm runs it natively.
 *
 * On kvm_pvm every CPL0 instruction goes through KVM's instruction emulator (~265 ns each)
 * and SSE/AVX/popcnt fail there; at CPL3 the CPU runs guest code itself (~0.14 ns per
 * instruction).  On VMX/SVM both run natively, so code written this way serves both.
 *
 *   static long sum(long n) { long s = 0; for (long i = 0; i < n; i++) s += i; return s; }
 *   ...
 *   long s = GUEST_USER_CALL(sum, 1000000);   // sum(1000000) at CPL3, result back at CPL0
 *
 * fn runs on a per-vCPU user stack with the guest image (its code, data and bss, the
 * runtime's included) mapped with the U bit; guest_user_map() adds buffers elsewhere.
 * This is for speed, not isolation: user code can write the image's kernel data.
 *
 * From user code, GUEST_SYNC/ASSERT/PRINTF/DONE, printf, puts and exit work as at CPL0.
 * The TSS's I/O bitmap opens the runtime's own ports (debug exit, COM1, the ucall port) to
 * user code, so where the host honours it (probed at the first user call: hardware, QEMU
 * and kvm_pvm do) they make their port I/O themselves, with no trip through CPL0; where it
 * does not, they notice CPL3 and enter the runtime with a system call, which does it.
 * A fault in fn (#PF, #GP, #UD, #DE, ...) is reported like a CPL0 one, with "CPL3" in
 * the message; GUEST_USER_TRY_CALL returns it to the caller instead.
 *
 * Vector code: build the files that hold user code with `pyvmm guest build --user-src
 * FILE` (the host's ISA, -march=native); the first user call on a vCPU enables what CPUID
 * offers (CR4.OSFXSR/OSXMMEXCPT, OSXSAVE and XCR0).  CPL0 code is built with
 * -mgeneral-regs-only and never touches vector registers, so user vector state simply
 * stays in the registers from one user call to the next; nothing is saved or restored.
 */
#ifndef PYVMM_USER_H
#define PYVMM_USER_H

#include <stddef.h>
#include <stdint.h>

struct guest_fault {
	uint64_t faulted;       /* 1 when fn faulted; the fields below describe the fault */
	uint64_t vector;        /* 14 = #PF, 13 = #GP, 6 = #UD, 0 = #DE, ... */
	uint64_t error_code;
	uint64_t cr2;           /* the faulting address of a #PF */
	uint64_t rip;
};

/* fn(arg) at CPL3; its result.  A fault in fn ends the run as an unhandled exception. */
long GUEST_USER_CALL(long (*fn)(long), long arg);
/* fn(arg) at CPL3; on a fault, fills *fault (faulted = 1) and returns -1. */
long GUEST_USER_TRY_CALL(long (*fn)(long), long arg, struct guest_fault *fault);
/* Set the U bit on [addr, addr + len) in the current page tables (for buffers outside the
 * guest image); whole pages, 2 MiB ones where the tables use them. */
void guest_user_map(const void *addr, size_t len);

/* System calls from user code into the runtime (SYSCALL; RAX = number). */
enum {
	GUEST_SYS_RETURN = 0, /* end of fn: (result) */
	GUEST_SYS_UCALL = 1,  /* the test protocol: (struct ucall *) */
	GUEST_SYS_WRITE = 2,  /* console output: (buf, len, newline) */
	GUEST_SYS_EXIT = 3,   /* exit(code) */
	GUEST_SYS_NOP = 4,    /* (value): returns it; what a round trip costs */
};
/* 1 once the first user call has found that user code may use the runtime's ports */
extern volatile uint32_t guest_user_io;

/* SYSCALL; or, once the runtime has seen SYSCALL stay at CPL3 (kvm_pvm does), a #UD at
 * a known address (guest_sys_trap) that the runtime's IDT handler turns into the call */
extern volatile uint32_t guest_sys_via_fault;
static inline long guest_syscall(long nr, long a, long b, long c)
{
	long ret;
	__asm__ volatile("cmpl $0, guest_sys_via_fault(%%rip)\n\t"
			 "jne 1f\n\t"
			 "syscall\n\t"
			 "jmp 2f\n"
			 "1:\tcall guest_sys_trap\n"
			 "2:"
			 : "=a"(ret), "+D"(a), "+S"(b), "+d"(c)
			 : "a"(nr)
			 : "rcx", "r8", "r9", "r10", "r11", "memory", "cc");
	return ret;
}

/* The current privilege level: CS.RPL (kvm_pvm shows CS 0x33 at CPL3, not the guest's
 * selector, but its low bits still say 3). */
static inline unsigned guest_cpl(void)
{
	uint16_t cs;
	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	return cs & 3u;
}

/* whether runtime code running now must reach its ports through a system call: at CPL3
 * on a host that does not apply the I/O bitmap (at CPL0 one emulated MOV from CS on
 * kvm_pvm, as before; the flag is only read at CPL3) */
static inline int guest_user_syscalls(void) { return guest_cpl() == 3 && !guest_user_io; }

#endif

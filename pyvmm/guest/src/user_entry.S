/* user_entry.S - into CPL3 and back: IRETQ down, SYSCALL up (user.h, docs/guests.md).
 *
 * guest_user_enter saves the CPL0 caller's callee-saved registers and flags, records that
 * stack in %gs:UC_KERNEL_RSP and in TSS.RSP0 (where an exception or interrupt at CPL3
 * lands), and IRETQs to guest_user_start at CPL3.  Every way back ends at that saved stack:
 * fn's return (system call 0), a fault (user_fault -> guest_user_unwind).  Other system
 * calls run their C handler on the same stack and go back by IRETQ: kvm_pvm's instruction
 * emulator, which runs all CPL0 code here, does not implement SYSRET.
 */
#include "internal.h"

	.text
	.code64

/* long guest_user_enter(fn, arg, first) */
	.globl guest_user_enter
guest_user_enter:
	push %rbp
	mov %rsp, %rbp
	push %rbx
	push %r12
	push %r13
	push %r14
	push %r15
	pushfq
	mov %rsp, %gs:UC_KERNEL_RSP
	mov %rsp, %gs:UC_RSP0
	pushq $SEL_USER_DS
	pushq %gs:UC_USER_STACK
	mov 16(%rsp), %rax             /* the caller's RFLAGS: user code keeps its IF */
	and $0x200, %eax
	or $2, %eax
	push %rax
	pushq $SEL_USER_CS
	lea guest_user_start(%rip), %rax
	push %rax
	iretq

/* CPL3: fn(arg), then back through system call 0 with the result.  The first call on a
 * vCPU puts the x87 and SSE control words into the ABI's state (FNINIT, MXCSR 0x1f80). */
	.globl guest_user_start
guest_user_start:
	xor %ebp, %ebp
	test %edx, %edx
	jz 1f
	fninit
	pushq $0x1f80
	ldmxcsr (%rsp)
	pop %rax
1:	mov %rdi, %rax
	mov %rsi, %rdi
	call *%rax
	mov %rax, %rdi
	xor %eax, %eax                 /* GUEST_SYS_RETURN */
	cmpl $0, guest_sys_via_fault(%rip)
	jne guest_sys_trap
	syscall
	ud2

/* SYSCALL lands here: RCX = user RIP, R11 = user RFLAGS, RSP still the user's, IF clear
 * (FMASK).  R8-R10 are the calling convention's to clobber.
 *
 * On VMX/SVM this is CPL0.  kvm_pvm jumps here too but leaves the vCPU at CPL3 (its
 * SYSCALL path is for PVM-aware kernels, whose supervisor mode is hardware ring 3), and
 * INT n at CPL3 raises #UD there; exceptions are what it delivers through the IDT at CPL0.
 * So the first thing is to look at CS: at CPL3 the call goes on as a fault
 * (guest_sys_trap), and guest_syscall makes it so directly from then on. */
	.globl guest_syscall_entry
guest_syscall_entry:
	mov %cs, %r8d
	test $3, %r8d
	jnz 3f
	test %rax, %rax
	jz guest_user_unwind           /* GUEST_SYS_RETURN: RDI = fn's result */
	mov %rsp, %r10
	mov %gs:UC_KERNEL_RSP, %rsp
	pushq $SEL_USER_DS             /* an IRETQ frame: kvm_pvm's emulator has no SYSRET */
	push %r10
	push %r11
	pushq $SEL_USER_CS
	push %rcx
	push %rbp                      /* 16-byte alignment for the C call */
	mov %rax, %rcx                 /* guest_syscall_dispatch(a, b, c, nr) */
	call guest_syscall_dispatch
	pop %rbp
	iretq
3:	movl $1, guest_sys_via_fault(%rip)
	push %rcx                      /* still CPL3, on the user stack: the trap, then return */
	push %r11
	popfq

/* The system call as a fault, at CPL3: RAX = number, RDI/RSI/RDX = arguments; returns RAX.
 * The #UD reaches the IDT at CPL0, where guest_ud_entry sees its RIP and runs the call. */
	.globl guest_sys_trap
guest_sys_trap:
	ud2
	ret

/* The IDT's #UD gate (idt.c): a #UD at guest_sys_trap from CPL3 is a system call, handled
 * here in a few instructions (each CPL0 instruction is emulated on kvm_pvm, so the general
 * path's fifteen saves and restores would cost more than the call); any other #UD takes
 * the general path (isr.S).  Frame: RIP, CS, RFLAGS, RSP, SS; RSP = TSS.RSP0. */
	.globl guest_ud_entry
guest_ud_entry:
	testb $3, 8(%rsp)
	jz 5f
	cmpq $guest_sys_trap, (%rsp)
	jne 5f
	test %rax, %rax
	jz guest_user_unwind           /* GUEST_SYS_RETURN: RDI = fn's result */
	push %rbp                      /* 16-byte alignment for the C call */
	mov %rax, %rcx
	call guest_syscall_dispatch
	pop %rbp
	addq $2, (%rsp)                /* to guest_sys_trap's ret */
	iretq
5:	jmp isr_stubs + 6 * 16

/* guest_user_unwind(result): back to guest_user_enter's caller with result (from CPL0
 * code running on the user call's kernel stack: the syscall or fault path) */
	.globl guest_user_unwind
guest_user_unwind:
	mov %rdi, %rax
	mov %gs:UC_KERNEL_RSP, %rsp
	popfq
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %rbx
	pop %rbp
	ret

	.data
	.balign 4
	.globl guest_sys_via_fault
guest_sys_via_fault:
	.long 0

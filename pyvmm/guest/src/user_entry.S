/* user_entry.S - into CPL3 and back: IRETQ down; a #UD at a known address (kvm_pvm) or
 * SYSCALL (VMX/SVM) up (user.h, docs/guests.md "User mode").
 *
 * On kvm_pvm every CPL0 instruction here is emulated (about 1-2 us each), while CPL3 code
 * runs natively, so the hot path is pure assembly with as little as possible at CPL0:
 * GUEST_USER_CALL checks that this vCPU is set up (TR is one of the runtime's TSSs), saves
 * RFLAGS and its stack in the vCPU's block, and IRETQs through a frame built once at
 * set-up; the user-mode trampoline saves what the fault path needs, calls fn, restores the
 * caller's callee-saved registers and traps; the #UD gate returns straight to the caller.
 * Eleven CPL0 instructions and one IRETQ down, five instructions and one event delivery
 * back.  Faults and the other system calls take the slower paths.
 */
#include "internal.h"

	.text
	.code64

/* long GUEST_USER_TRY_CALL(fn, arg, struct guest_fault *fault) */
	.globl GUEST_USER_TRY_CALL
GUEST_USER_TRY_CALL:
	movq $0, (%rdx)                /* fault->faulted: at CPL0 (it may be on a kernel stack) */
	jmp user_call

/* long GUEST_USER_CALL(fn, arg) */
	.globl GUEST_USER_CALL
GUEST_USER_CALL:
	xor %edx, %edx                 /* no struct guest_fault: a fault is reported */
user_call:
	str %eax                       /* set up on this vCPU: TR is one of the runtime's TSSs */
	sub $SEL_TSS0, %eax
	cmp $16 * MAX_CPUS, %eax
	jae user_call_setup
	pushfq                         /* the caller's IF, restored on the way back */
	mov %rsp, %gs:UC_KERNEL_RSP
	testb $2, 1(%rsp)              /* IF: user code runs with the caller's */
	jnz 1f
	mov %gs:UC_FRAME0, %rsp
	iretq
1:	mov %gs:UC_FRAME1, %rsp
	iretq

/* the first call on this vCPU: set it up (user.c), then make the call */
user_call_setup:
	push %rdi
	push %rsi
	push %rdx
	call guest_user_setup
	pop %rdx
	pop %rsi
	pop %rdi
	jmp user_call

/* CPL3, on this vCPU's user stack (its top, 16-byte aligned), RDI = fn, RSI = arg, RDX =
 * the struct guest_fault or 0, the other registers the caller's.  The frames' RIP is
 * guest_user_start_first until the first call has put the x87 and SSE control words into
 * the ABI's state (FNINIT, MXCSR 0x1f80: neither works at CPL0 on kvm_pvm). */
	.globl guest_user_start_first
guest_user_start_first:
	fninit
	pushq $0x1f80
	ldmxcsr (%rsp)
	pop %rax
	call user_block
	movq $guest_user_start, UC_FRAMES + FRAME_RIP(%rax)
	movq $guest_user_start, UC_FRAMES + 40 + FRAME_RIP(%rax)
	.globl guest_user_start
guest_user_start:
	call user_block
	mov %rdx, UC_FAULT(%rax)       /* for the fault path, stored here at native speed */
	mov %rbx, UC_SAVED(%rax)
	mov %rbp, UC_SAVED + 8(%rax)
	mov %r12, UC_SAVED + 16(%rax)
	mov %r13, UC_SAVED + 24(%rax)
	mov %r14, UC_SAVED + 32(%rax)
	mov %r15, UC_SAVED + 40(%rax)
	mov %rax, %rbx                 /* the block, kept across fn (callee-saved) */
	xor %ebp, %ebp
	mov %rdi, %rax
	mov %rsi, %rdi
	call *%rax
	mov UC_SAVED + 8(%rbx), %rbp   /* the caller's registers back, whatever fn did */
	mov UC_SAVED + 16(%rbx), %r12
	mov UC_SAVED + 24(%rbx), %r13
	mov UC_SAVED + 32(%rbx), %r14
	mov UC_SAVED + 40(%rbx), %r15
	mov UC_SAVED(%rbx), %rbx
	cmpl $0, guest_sys_via_fault(%rip)
	jne guest_user_return_trap
	mov %rax, %rdi                 /* GUEST_SYS_RETURN (RDI = fn's result) by SYSCALL */
	xor %eax, %eax
	syscall
	/* kvm_pvm's first time: SYSCALL stayed at CPL3 and comes back here (below) */
	mov %rdi, %rax
	.globl guest_user_return_trap
guest_user_return_trap:
	ud2                            /* RAX = fn's result: guest_ud_entry returns it */

/* CPL3: RAX = this vCPU's struct user_cpu, from the stack pointer (the user stacks are an
 * array of 1 << USER_STACK_SHIFT bytes each; RSP is at most at the top of this one) */
user_block:
	lea -8(%rsp), %rax             /* below the top even on the call's first push */
	sub $guest_user_stacks, %rax
	shr $USER_STACK_SHIFT, %rax
	imul $UC_SIZE, %rax, %rax
	add $guest_user_cpus, %rax
	ret

/* SYSCALL lands here: RCX = user RIP, R11 = user RFLAGS, RSP still the user's, IF clear
 * (FMASK).  R8-R10 are the calling convention's to clobber.
 *
 * On VMX/SVM this is CPL0.  kvm_pvm jumps here too but leaves the vCPU at CPL3 (its
 * SYSCALL path is for PVM-aware kernels, whose supervisor mode is hardware ring 3), and
 * INT n at CPL3 raises #UD there; exceptions are what it delivers through the IDT at CPL0.
 * So the first thing is to look at CS: at CPL3 the call goes on as a fault
 * (guest_sys_trap), and guest_syscall and the trampoline trap directly from then on. */
	.globl guest_syscall_entry
guest_syscall_entry:
	mov %cs, %r8d
	test $3, %r8d
	jnz 3f
	mov %rsp, %r10                 /* CPL0: an IRETQ frame on the vCPU's event stack */
	mov %gs:UC_RSP0, %rsp
	pushq $SEL_USER_DS
	push %r10
	push %r11
	pushq $SEL_USER_CS
	push %rcx
	jmp sys_dispatch
3:	movl $1, guest_sys_via_fault(%rip)
	test %rax, %rax                /* still CPL3, on the user stack */
	jz 4f
	push %rcx                      /* the trap, then back to the caller of SYSCALL */
	push %r11
	popfq
	jmp guest_sys_trap
4:	push %r11                      /* GUEST_SYS_RETURN: back to the trampoline (above) */
	popfq
	jmp *%rcx

/* The system call as a fault, at CPL3: RAX = number, RDI/RSI/RDX = arguments; returns RAX.
 * The #UD reaches the IDT at CPL0, where guest_ud_entry sees its RIP and runs the call. */
	.globl guest_sys_trap
guest_sys_trap:
	ud2
	ret

/* The IDT's #UD gate (idt.c), on TSS.RSP0 (the vCPU's event stack) from CPL3: the end of a
 * user call, a system call, or any other #UD (isr_stubs' vector 6, the general path).
 * Frame: RIP, CS, RFLAGS, RSP, SS.  The RIPs are only reached at CPL3. */
	.globl guest_ud_entry
guest_ud_entry:
	cmpq $guest_user_return_trap, (%rsp)
	jne 1f
/* back to GUEST_USER_CALL's caller with RAX; the callee-saved registers are the caller's */
guest_user_return:
	mov %gs:UC_KERNEL_RSP, %rsp
	popfq
	ret
1:	cmpq $guest_sys_trap, (%rsp)
	jne isr_stubs + 6 * 16
	addq $2, (%rsp)                /* to guest_sys_trap's ret */
sys_dispatch:                          /* an IRETQ frame on the event stack */
	cmp $SYS_NOP, %rax
	ja sys_c
	jmp *sys_table(, %rax, 8)
sys_return:                            /* GUEST_SYS_RETURN from fn itself: (result) */
	jmp guest_user_unwind
sys_ucall:                             /* the test protocol's OUT (ucall.h), RDI = struct */
	mov $0x1000, %edx
	xor %eax, %eax
	outb %al, %dx
	iretq
sys_nop:
	mov %rdi, %rax
	iretq
sys_c:                                 /* the rest in C: guest_syscall_dispatch(a, b, c, nr) */
	push %rbp                      /* 16-byte alignment for the C call */
	mov %rax, %rcx
	call guest_syscall_dispatch
	pop %rbp
	iretq

	.section .rodata
	.balign 8
sys_table:
	.quad sys_return, sys_ucall, sys_c, sys_c, sys_nop
	.text

/* guest_user_unwind(result): back to GUEST_USER_CALL's caller with result and the
 * registers the trampoline saved (from CPL0 code on the event stack: a fault, or a
 * GUEST_SYS_RETURN from fn) */
	.globl guest_user_unwind
guest_user_unwind:
	mov %rdi, %rax
	mov %gs:UC_SAVED, %rbx
	mov %gs:UC_SAVED + 8, %rbp
	mov %gs:UC_SAVED + 16, %r12
	mov %gs:UC_SAVED + 24, %r13
	mov %gs:UC_SAVED + 32, %r14
	mov %gs:UC_SAVED + 40, %r15
	jmp guest_user_return

	.data
	.balign 4
	.globl guest_sys_via_fault
guest_sys_via_fault:
	.long 0

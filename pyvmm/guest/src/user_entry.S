/* user_entry.S - into CPL3 and back: IRETQ down; a #UD at a known address (kvm_pvm) or
 * SYSCALL (VMX/SVM) up (user.h, docs/guests.md "User mode").
 *
 * On kvm_pvm every CPL0 instruction here is emulated (about 1-2 us each), while CPL3 code
 * runs natively, so the hot path is pure assembly with as little as possible at CPL0:
 * GUEST_USER_CALL checks that this vCPU is set up (TR is one of the runtime's TSSs), puts
 * the caller's RFLAGS into the IRETQ frame built at set-up (user code runs with the
 * caller's IF) and its stack pointer into the vCPU's block, and IRETQs; the user-mode
 * trampoline saves what the fault path needs, calls fn, restores the caller's callee-saved
 * registers and traps; the #UD gate (a trap gate: IF is the caller's again) returns
 * straight to the caller.  Seven CPL0 instructions and one IRETQ down, four instructions
 * and one event delivery back (docs/guests.md has the costs).  Faults and the other system
 * calls take slower paths.
 */
#include "internal.h"

	.text
	.code64

/* long GUEST_USER_CALL(fn, arg); GUEST_USER_TRY_CALL below is the same but for its frame
 * (whose RIP is the trampoline that takes RDX as the struct guest_fault).  Set up on this
 * vCPU: STR and one compare, as TR is 0 before set-up (or a guest's own TSS, with which
 * user mode could not work anyway: CPL3 events land on its RSP0). */
	.globl GUEST_USER_CALL
GUEST_USER_CALL:
	str %eax
	cmp $SEL_TSS0, %eax
	jb 1f
	pushfq                         /* the caller's RFLAGS into the frame: IF for user code */
	popq %gs:UC_FRAMES + FRAME_RFLAGS
	mov %rsp, %gs:UC_KERNEL_RSP
	mov %gs:UC_FRAME0, %rsp
	iretq
1:	call user_call_setup
	jmp GUEST_USER_CALL

/* long GUEST_USER_TRY_CALL(fn, arg, struct guest_fault *fault) */
	.globl GUEST_USER_TRY_CALL
GUEST_USER_TRY_CALL:
	movq $0, (%rdx)                /* fault->faulted: at CPL0 (it may be on a kernel stack) */
2:	str %eax
	cmp $SEL_TSS0, %eax
	jb 1f
	pushfq
	popq %gs:UC_FRAME_TRY + FRAME_RFLAGS
	mov %rsp, %gs:UC_KERNEL_RSP
	mov %gs:UC_FRAME1, %rsp
	iretq
1:	call user_call_setup
	jmp 2b

/* the first call on this vCPU: set it up (user.c) and return to make the call */
user_call_setup:
	push %rdi
	push %rsi
	push %rdx
	sub $8, %rsp                   /* 16-byte alignment for the C call */
	call guest_user_setup
	add $8, %rsp
	pop %rdx
	pop %rsi
	pop %rdi
	ret

/* CPL3, on this vCPU's user stack (its top, 16-byte aligned), RDI = fn, RSI = arg, RDX =
 * the struct guest_fault (TRY), the other registers the caller's.  The frames' RIP is
 * a _first variant until the first call has put the x87 and SSE control words into the
 * ABI's state (FNINIT, MXCSR 0x1f80: neither works at CPL0 on kvm_pvm). */
.macro FPU_FIRST
	fninit
	pushq $0x1f80
	ldmxcsr (%rsp)
	pop %rax
	call user_block
	movq $guest_user_start, UC_FRAMES + FRAME_RIP(%rax)
	movq $guest_user_start_try, UC_FRAME_TRY + FRAME_RIP(%rax)
.endm
	.globl guest_user_start_first, guest_user_start_try_first
guest_user_start_first:
	FPU_FIRST
	jmp guest_user_start
guest_user_start_try_first:
	FPU_FIRST
	jmp guest_user_start_try

	.globl guest_user_start, guest_user_start_try
guest_user_start:
	xor %edx, %edx                 /* no struct guest_fault: a fault is reported */
guest_user_start_try:
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
/* back to GUEST_USER_CALL's caller with RAX; the callee-saved registers are the caller's,
 * and so is IF (a trap gate from user code that ran with the caller's RFLAGS) */
	mov %gs:UC_KERNEL_RSP, %rsp
	ret
1:	cmpq $guest_sys_trap, (%rsp)
	jne 2f
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
	cli                            /* as an interrupt gate would (IRETQ restores IF) */
	push %rbp                      /* 16-byte alignment for the C call */
	mov %rax, %rcx
	call guest_syscall_dispatch
	pop %rbp
	iretq

2:	cli                            /* any other #UD: isr_stubs' vector 6, IF clear */
	jmp isr_stubs + 6 * 16

	.section .rodata
	.balign 8
sys_table:
	.quad sys_return, sys_ucall, sys_c, sys_c, sys_nop
	.text

/* guest_user_unwind(result): back to GUEST_USER_CALL's caller with result, the registers
 * the trampoline saved and the caller's RFLAGS from the call's frame (from CPL0 code on the
 * event stack: a fault, or GUEST_SYS_RETURN from fn or by SYSCALL) */
	.globl guest_user_unwind
guest_user_unwind:
	mov %rdi, %rax
	mov %gs:UC_SAVED, %rbx
	mov %gs:UC_SAVED + 8, %rbp
	mov %gs:UC_SAVED + 16, %r12
	mov %gs:UC_SAVED + 24, %r13
	mov %gs:UC_SAVED + 32, %r14
	mov %gs:UC_SAVED + 40, %r15
	mov %gs:UC_FRAME0, %rcx        /* the call's frame: TRY's if it has a struct guest_fault */
	cmpq $0, %gs:UC_FAULT
	je 1f
	mov %gs:UC_FRAME1, %rcx
1:	mov %gs:UC_KERNEL_RSP, %rsp
	pushq FRAME_RFLAGS(%rcx)
	popfq
	ret

	.data
	.balign 4
	.globl guest_sys_via_fault
guest_sys_via_fault:
	.long 0

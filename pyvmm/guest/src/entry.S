/* entry.S - pyvmm guest entry (ELF64 convention) and the AP start-up trampoline.
 *
 * The VMM enters _start in 64-bit mode, paging on, RSP = top of a stack, RDI = boot info.
 * An AP woken by INIT/SIPI starts in real mode at ap_trampoline (0x8000, SIPI vector 8)
 * and climbs real -> 32-bit protected -> long mode in one step (paging together with
 * EFER.LME: the only paging switch kvm_pvm accepts, see HOST-KVM.md).
 */
/* From 32-bit protected mode (flat 0x10 data) to long mode: CR3 from \cr3src, PAE,
 * EFER.LME|NXE, then paging together with LME (the one paging switch kvm_pvm accepts)
 * and a far jump to \target in the 64-bit code segment 0x08. */
	.macro ENTER_LONG_MODE cr3src, target
	mov $0x10, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	mov \cr3src, %eax
	mov %eax, %cr3
	mov %cr4, %eax
	or $0x20, %eax
	mov %eax, %cr4
	mov $0xC0000080, %ecx
	rdmsr
	or $0x900, %eax
	wrmsr
	mov %cr0, %eax
	or $0x80000001, %eax
	mov %eax, %cr0
	ljmpl $0x08, $\target
	.endm

/* The 64-bit landing of the 32-bit entries: data segments, the boot stack, then \fn(rdi, rsi). */
	.macro BOOT64 fn
	mov $0x10, %ax
	mov %ax, %ds
	mov %ax, %ss
	lea pvh_stack_top(%rip), %rsp
	xor %ebp, %ebp
	call \fn
9:	cli
	hlt
	jmp 9b
	.endm

	.section .text.entry, "ax"
	.code64
	.globl _start
_start:
	xor %ebp, %ebp
	call rt_start          /* never returns */
1:	cli
	hlt
	jmp 1b

/* PVH entry (x86/HVM direct boot ABI, as QEMU's -kernel uses it): 32-bit protected mode,
 * paging off, EBX = hvm_start_info.  Climb to long mode with our own tables and the AP
 * trampoline's GDT, then call rt_start_pvh(start_info). */
	.code32
	.globl pvh_start32
pvh_start32:
	cli
	mov %ebx, %esi
	lgdtl boot_gdtr
	ljmpl $0x18, $1f
1:	ENTER_LONG_MODE $pvh_pml4, 2f
	.code64
2:	mov %esi, %edi
	BOOT64 rt_start_pvh

/* Multiboot v1 entry (the .flat builds: e_entry = mb_start32, objcopy'd to ELF32): 32-bit
 * protected mode, paging off, EAX = 0x2BADB002, EBX = the multiboot info.  Same climb as
 * the PVH entry, then rt_start_multiboot(info, magic). */
	.code32
	.globl mb_start32
mb_start32:
	cli
	mov %ebx, %esi
	mov %eax, %edi
	lgdtl boot_gdtr
	ljmpl $0x18, $1f
1:	ENTER_LONG_MODE $pvh_pml4, 2f
	.code64
2:	xchg %esi, %edi            /* rdi = info, rsi = magic */
	BOOT64 rt_start_multiboot

/* 64-bit landing for APs: take the next per-AP stack, call ap_main(index). */
	.globl ap_entry64
ap_entry64:
	mov $1, %ecx
	lock xaddl %ecx, ap_stack_next(%rip)
	cmp $AP_MAX, %ecx          /* more APs than stacks: this one waits, halted, for good */
	jae 3f
	mov %ecx, %eax
	inc %eax
	imul $AP_STACK_SIZE, %eax, %eax
	lea ap_stacks(%rip), %rsp
	add %rax, %rsp
	mov %ecx, %edi
	xor %ebp, %ebp
	call ap_main
2:	cli
	hlt
	jmp 2b
3:	cli
	hlt
	jmp 3b

	.section .multiboot, "a"
	.balign 4
	.long 0x1BADB002, 0x3, -(0x1BADB002 + 0x3)   /* magic, page-align + memory info, checksum */

	.section .note.pvh, "a"
	.balign 4
	.long 4, 4, 18             /* namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.long pvh_start32

	.data
	.balign 8
boot_gdt:                          /* for the 32-bit entries: the trampoline (and its GDT) */
	.quad 0                        /* may not be at 0x8000 yet in .flat builds */
	.quad 0x00AF9B000000FFFF
	.quad 0x00CF93000000FFFF
	.quad 0x00CF9B000000FFFF
boot_gdtr:
	.word 4 * 8 - 1
	.long boot_gdt
	.balign 4096
pvh_pml4:
	.quad pvh_pdpt + 3
	.fill 511, 8, 0
pvh_pdpt:
	.quad pvh_pd + 3, pvh_pd + 0x1003, pvh_pd + 0x2003, pvh_pd + 0x3003
	.fill 508, 8, 0
pvh_pd:                            /* identity map of 4 GiB with 2 MiB pages */
	.set i, 0
	.rept 2048
	.quad (i << 21) | 0x83
	.set i, i + 1
	.endr
	.bss
	.balign 16
	.skip 65536
pvh_stack_top:

	.text
	.equ AP_STACK_SIZE, 16384
	.equ AP_MAX, 64            /* pyvmm runs at most 64 vCPUs */
	.globl ap_stack_next
	.bss
	.balign 16
ap_stacks:
	.skip AP_STACK_SIZE * AP_MAX
	.data
	.balign 4
ap_stack_next:
	.long 0

	.section .ap_trampoline, "awx"
	.code16
	.globl ap_trampoline
ap_trampoline:
	cli
	xor %ax, %ax
	mov %ax, %ds
	mov %cr0, %eax
	movl %eax, ap_boot_cr0     /* proof of where we started: PE clear in real mode */
	lgdtl ap_gdtr
	mov %cr0, %eax
	or $1, %eax
	mov %eax, %cr0
	ljmpl $0x18, $ap_pm32
	.code32
ap_pm32:
	ENTER_LONG_MODE ap_cr3, ap_lm64
	.code64
ap_lm64:
	mov $0x10, %ax
	mov %ax, %ds
	mov %ax, %ss
	movabs $ap_entry64, %rax
	jmp *%rax

	.balign 8
	.globl ap_cr3, ap_boot_cr0
ap_cr3:	.long 0
ap_boot_cr0: .long 0
	.balign 8
ap_gdt:
	.quad 0
	.quad 0x00AF9B000000FFFF   /* 0x08 code64 */
	.quad 0x00CF93000000FFFF   /* 0x10 data */
	.quad 0x00CF9B000000FFFF   /* 0x18 code32 */
ap_gdtr:
	.word 4 * 8 - 1
	.long ap_gdt

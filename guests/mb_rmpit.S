/* mb_rmpit - a multiboot kernel that leaves 32-bit protected mode for real mode and counts
 * 10 PIT IRQ0 ticks through the IVT, the way firmware-era test kernels do.  It relies on
 * what a BIOS leaves (pyvmm's PC platform does the same): master PIC based at vector 8
 * with IRQ0 unmasked, LINT0 in ExtINT mode, the PIT at ports 0x40-0x43.  Prints
 * "PASS rm-pit" and exits with the tick count (10) through isa-debug-exit.
 * Linked at 0x1000 (guests/lib/mb16.ld): real mode with CS = DS = 0 reaches it. */
	.section .multiboot, "a"
	.balign 4
	.long 0x1BADB002, 0, -0x1BADB002

	.text
	.code32
	.globl _start
_start:
	cli
	lgdt gdtr
	ljmp $0x08, $pm16          /* 16-bit protected mode first: real mode needs 64 KiB limits */
	.code16
pm16:
	mov $0x10, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	mov %cr0, %eax
	and $0xFFFFFFFE, %eax      /* PE off */
	mov %eax, %cr0
	ljmp $0, $rm
rm:
	xor %ax, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	mov $0x8F00, %sp
	lidt ivtr                  /* the real-mode IVT at 0 (the multiboot entry left none) */
	movw $tick_isr, 8 * 4      /* IVT[8]: IRQ0 with the PIC based at 8 */
	movw $0, 8 * 4 + 2
	mov $0x34, %al             /* PIT channel 0, lo/hi, mode 2, 1 kHz */
	out %al, $0x43
	mov $(1193 & 0xFF), %al
	out %al, $0x40
	mov $(1193 >> 8), %al
	out %al, $0x40
	sti
1:	hlt
	cmpw $10, ticks
	jb 1b
	cli
	mov $msg, %si
2:	lodsb
	test %al, %al
	jz 4f
	mov %al, %bl
3:	mov $0x3FD, %dx            /* UART LSR: wait for THRE */
	in %dx, %al
	test $0x20, %al
	jz 3b
	mov $0x3F8, %dx
	mov %bl, %al
	out %al, %dx
	jmp 2b
4:	mov ticks, %ax
	mov $0xF4, %dx
	out %ax, %dx               /* isa-debug-exit: the tick count */
5:	hlt
	jmp 5b

tick_isr:
	incw %cs:ticks
	push %ax
	mov $0x20, %al             /* EOI to the master PIC */
	out %al, $0x20
	pop %ax
	iret

	.data
	.balign 8
ticks:	.word 0
msg:	.asciz "PASS rm-pit\n"
	.balign 8
gdt:	.quad 0
	.quad 0x00009A000000FFFF   /* 0x08: 16-bit code, base 0, 64 KiB */
	.quad 0x000092000000FFFF   /* 0x10: 16-bit data */
gdtr:	.word 3 * 8 - 1
	.long gdt
ivtr:	.word 0x3FF
	.long 0

/* mb_rmpit - a multiboot kernel that leaves 32-bit protected mode for real mode and counts
 * 10 PIT IRQ0 ticks through the IVT, the way firmware-era test kernels do.  It relies on
 * what a BIOS leaves (pyvmm's PC platform does the same): master PIC based at vector 8
 * with IRQ0 unmasked, LINT0 in ExtINT mode, the PIT at ports 0x40-0x43.  Prints
 * "PASS rm-pit" and exits with the tick count (10) through isa-debug-exit.
 * Entered in real mode from guests/mb16_entry.S, which is linked first, at 0x1000: real
 * mode with CS = DS = 0 reaches it. */
	.text
	.code16
	.globl rm_main
rm_main:                           /* its own IRQ 0 handler in the IVT, its own PIT rate */
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
	call puts
	mov ticks, %ax
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

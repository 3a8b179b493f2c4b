/* mb16_entry - what the small real-mode multiboot kernels (mb_rmpit, mb_bios) share: the
 * multiboot header, the drop from the 32-bit multiboot entry to real mode (through 16-bit
 * protected mode, for the 64 KiB limits real mode needs) with CS = DS = ES = SS = 0,
 * SP = 0x8F00 and the IDT register at the real-mode IVT, then a jump to the kernel's
 * `rm_main`; and `puts`, which writes the string at DS:SI to COM1.
 * Linked first, at 0x1000 (guests/mb16.ld). */
	.section .multiboot, "a"
	.balign 4
	.long 0x1BADB002, 0, -0x1BADB002

	.text
	.code32
	.globl _start
_start:
	cli
	lgdt gdtr
	ljmp $0x08, $pm16
	.code16
pm16:
	mov $0x10, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	mov %cr0, %eax
	and $0xFFFFFFFE, %eax        /* PE off */
	mov %eax, %cr0
	ljmp $0, $rm
rm:
	xor %ax, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	mov $0x8F00, %sp
	lidt ivtr                    /* the real-mode IVT at 0 */
	jmp rm_main

	.globl puts
puts:
	lodsb
	test %al, %al
	jz 2f
	mov %al, %bl
1:	mov $0x3FD, %dx              /* UART LSR: wait for THRE */
	in %dx, %al
	test $0x20, %al
	jz 1b
	mov $0x3F8, %dx
	mov %bl, %al
	out %al, %dx
	jmp puts
2:	ret

	.data
	.balign 8
gdt:	.quad 0
	.quad 0x00009A000000FFFF     /* 0x08: 16-bit code, base 0, 64 KiB */
	.quad 0x000092000000FFFF     /* 0x10: 16-bit data */
gdtr:	.word 3 * 8 - 1
	.long gdt
ivtr:	.word 0x3FF
	.long 0

/* mb_bios - relies on the BIOS state a PC's firmware leaves: the PIT counting on IRQ 0 at
 * 18.2 Hz, the master PIC at vector 8 with IRQ 0 unmasked, and an INT 08h handler that counts
 * ticks in the BIOS data area (0x46C).  Drops to real mode, sti; hlt until 3 ticks were
 * counted there (it programs nothing itself), reports, exits through isa-debug-exit.
 * Linked at 0x1000 (guests/mb16.ld), as mb_rmpit. */
	.section .multiboot, "a"
	.balign 4
	.long 0x1BADB002, 0, -0x1BADB002

	.text
	.code32
	.globl _start
_start:
	cli
	lgdt gdtr
	ljmp $0x08, $pm16            /* 16-bit protected mode first: real mode needs 64 KiB limits */
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
	lidt ivtr                    /* the real-mode IVT the BIOS set up, at 0 */
	mov 0x46C, %cx               /* the BIOS tick count so far */
	sti
1:	hlt
	mov 0x46C, %ax
	sub %cx, %ax
	cmp $3, %ax
	jb 1b
	cli
	mov $pass, %si
	call puts
	xor %ax, %ax
	mov $0xF4, %dx
	out %ax, %dx                 /* isa-debug-exit: 0, passed */
2:	hlt
	jmp 2b

puts:
	lodsb
	test %al, %al
	jz 2f
	mov %al, %bl
1:	mov $0x3FD, %dx
	in %dx, %al
	test $0x20, %al
	jz 1b
	mov $0x3F8, %dx
	mov %bl, %al
	out %al, %dx
	jmp puts
2:	ret

	.data
pass:	.ascii "PASS: bios: the firmware's PIT and INT 08h counted 3 ticks at 0x46c\n"
	.asciz "SUMMARY: 1 tests\n"
	.balign 8
gdt:	.quad 0
	.quad 0x00009A000000FFFF     /* 0x08: 16-bit code, base 0, 64 KiB */
	.quad 0x000092000000FFFF     /* 0x10: 16-bit data */
gdtr:	.word 3 * 8 - 1
	.long gdt
ivtr:	.word 0x3FF
	.long 0

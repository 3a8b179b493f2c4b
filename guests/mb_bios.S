/* mb_bios - relies on the BIOS state a PC's firmware leaves: the PIT counting on IRQ 0 at
 * 18.2 Hz, the master PIC at vector 8 with IRQ 0 unmasked, and an INT 08h handler that counts
 * ticks in the BIOS data area (0x46C).  Drops to real mode, sti; hlt until 3 ticks were
 * counted there (it programs nothing itself), reports, exits through isa-debug-exit.
 * Entered in real mode from guests/mb16_entry.S, which is linked first, at 0x1000. */
	.text
	.code16
	.globl rm_main
rm_main:                             /* the IVT the BIOS set up, with its INT 08h handler */
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

	.data
pass:	.ascii "PASS: bios: the firmware's PIT and INT 08h counted 3 ticks at 0x46c\n"
	.asciz "SUMMARY: 1 tests\n"

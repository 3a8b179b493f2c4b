/* mb_stiwin - what a kernel written for QEMU's PC may take for granted about PIT IRQ 0 at
 * entry: the BIOS has had the PIT ticking while it loaded the kernel with interrupts off, so
 * IRQ 0 is latched in the master PIC's IRR (edge-triggered: the bit stays until the CPU takes
 * it) and not in service.  The kernel reads IRR and ISR with OCW3, unmasks IRQ 0, opens a
 * one-instruction interrupt window (sti; nop; cli), then lets the latched IRQ 0 in and goes
 * on to a PIT case of its own (1 kHz, 5 ticks).  Prints kvm-unit-tests style lines and exits
 * through isa-debug-exit with 0 (all passed) or 1.
 *
 * Whether the interrupt is taken inside the one-instruction window is printed as an info
 * line, not a verdict: it depends on the host's KVM, not on the VMM (kvm_pvm runs CPL0 code
 * in KVM's instruction emulator and injects only between its batches; under QEMU and pyvmm
 * alike it arrives a few hundred instructions later there), so a verdict on it would encode
 * the host.
 * Entered in real mode from guests/mb16_entry.S, which is linked first, at 0x1000. */
	.text
	.code16

/* one report line: PASS if the flags say `ok` (jump condition \ok), FAIL otherwise */
.macro REPORT ok, msg
	\ok 1f
	incb fails
	mov $fail, %si
	jmp 2f
1:	mov $pass, %si
2:	call puts
	mov $\msg, %si
	call puts
.endm

	.globl rm_main
rm_main:
	movw $tick_isr, 8 * 4        /* IVT[8]: IRQ 0 with the PIC based at 8, as a BIOS leaves it */
	movw $0, 8 * 4 + 2
	mov $0x0A, %al               /* OCW3: read IRR */
	out %al, $0x20
	in $0x20, %al
	mov %al, %bl
	mov $0x0B, %al               /* OCW3: read ISR */
	out %al, $0x20
	in $0x20, %al
	mov %al, %bh
	test $1, %bl
	REPORT jnz, m_latched
	test $1, %bh
	REPORT jz, m_isr

	in $0x21, %al                /* unmask IRQ 0, open a one-instruction window */
	and $0xFE, %al
	out %al, $0x21
	sti
	nop
	cli
	mov $m_win, %si
	call puts
	mov $m_taken, %si
	cmpb $0, ticks
	jnz 3f
	mov $m_not, %si
3:	call puts

	xor %ecx, %ecx               /* interrupts on: the latched IRQ 0 must come now */
	sti
4:	cmpb $0, ticks
	jnz 5f
	inc %ecx
	cmp $100000, %ecx            /* ~0.1 s at the emulator's pace; the PIT's next tick is 55 ms */
	jb 4b
5:	cli
	cmpb $0, ticks
	REPORT jnz, m_taken_late

	mov $0x34, %al               /* the kernel's own PIT case: channel 0, mode 2, 1 kHz */
	out %al, $0x43
	mov $(1193 & 0xFF), %al
	out %al, $0x40
	mov $(1193 >> 8), %al
	out %al, $0x40
	movb $0, ticks
	sti
6:	hlt
	cmpb $5, ticks
	jb 6b
	cli
	cmpb $5, ticks
	REPORT jae, m_pit

	mov $m_sum, %si
	call puts
	cmpb $0, fails
	je 7f
	mov fails, %al
	add $'0', %al
	mov %al, m_nfail + 2
	mov $m_nfail, %si
	call puts
7:	mov $m_nl, %si
	call puts
	xor %ax, %ax
	cmpb $0, fails
	je 8f
	inc %ax
8:	mov $0xF4, %dx
	out %ax, %dx                 /* isa-debug-exit: 0 passed, 1 failed */
9:	hlt
	jmp 9b

tick_isr:
	incb %cs:ticks
	push %ax
	mov $0x20, %al               /* EOI to the master PIC */
	out %al, $0x20
	pop %ax
	iret

	.data
ticks:	.byte 0
fails:	.byte 0
pass:	.asciz "PASS: stiwin: "
fail:	.asciz "FAIL: stiwin: "
m_latched:	.asciz "PIT IRQ 0 latched in the master PIC's IRR at entry\n"
m_isr:	.asciz "and not in service (ISR bit 0 clear)\n"
m_win:	.asciz "stiwin: info: IRQ 0 in the one-instruction window (sti; nop; cli): "
m_taken:	.asciz "taken\n"
m_not:	.asciz "not taken\n"
m_taken_late:	.asciz "the latched IRQ 0 arrives once interrupts are on\n"
m_pit:	.asciz "PIT channel 0 at 1 kHz: 5 ticks on IRQ 0\n"
m_sum:	.asciz "SUMMARY: 4 tests"
m_nfail:	.asciz ", 0 unexpected failures"
m_nl:	.asciz "\n"

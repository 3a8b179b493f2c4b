/* pio_loop - the benchmark guest: bench_count OUTs to port 0x80, then debug-exit 0.
 * The same bytes run under pyvmm (as an ELF) and under raw_vmm (as a flat binary), so
 * every path pays the same guest-side cost per exit. */
	.section .text.entry, "ax"
	.code64
	.globl _start
_start:
	mov bench_count(%rip), %rcx
	test %rcx, %rcx
	jz 2f
1:	out %al, $0x80
	dec %rcx
	jnz 1b
2:	xor %eax, %eax
	out %eax, $0xf4
3:	cli
	hlt
	jmp 3b

	.data
	.balign 8
	.globl bench_count
bench_count:
	.quad 1000

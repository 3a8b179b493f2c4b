/* mb_low - an ELF32 multiboot kernel linked at 0x8000 whose segment covers 0x9000-0xFFFF,
 * where QEMU's -kernel (and pyvmm) put the multiboot information.  QEMU boots it, loading
 * the kernel's own bytes over the information; pyvmm used to refuse it.  Checks EAX's magic,
 * that EBX points into that area, and that the kernel's own pattern there is intact (its
 * image won, as under QEMU); prints kvm-unit-tests lines, exits through isa-debug-exit. */
	.section .multiboot, "a"
	.balign 4
	.long 0x1BADB002, 0x3, -(0x1BADB002 + 0x3)

	.text
	.code32
	.globl _start
_start:
	cli
	mov $0x7f00, %esp
	push %eax
	mov $info_ebx, %esi
	call puts
	mov %ebx, %eax
	call puthex
	mov $nl, %esi
	call puts
	pop %eax
	mov $0, %edi                 /* failures */
	cmp $0x2BADB002, %eax
	je 1f
	inc %edi
	mov $fail_magic, %esi
	call puts
	jmp 2f
1:	mov $pass_magic, %esi
	call puts
2:	cmp $0x9000, %ebx            /* the info block: in the area it was written over */
	jb 3f
	cmp $0x10000, %ebx
	jae 3f
	mov $pass_info, %esi
	call puts
	jmp 4f
3:	inc %edi
	mov $fail_info, %esi
	call puts
4:	cmpl $0x5a5a5a5a, (%ebx)      /* the kernel's own bytes where the info block went */
	jne 5f
	mov $pass_cmd, %esi
	call puts
	jmp 7f
5:	inc %edi
	mov $fail_cmd, %esi
	call puts
7:	mov $summary, %esi
	call puts
	test %edi, %edi
	jz 8f
	mov $comma, %esi
	call puts
	lea '0'(%edi), %eax          /* at most 3 failures: one digit */
	mov %al, digit
	mov $digit, %esi
	call puts
	mov $summary_fail, %esi
	call puts
8:	mov $nl, %esi
	call puts
	mov %edi, %eax
	mov $0xf4, %dx
	out %eax, %dx
9:	hlt
	jmp 9b

puthex:                              /* EAX as 8 hex digits, to COM1 */
	mov $8, %ecx
1:	rol $4, %eax
	push %eax
	and $0xf, %eax
	mov hexdigits(%eax), %al
	mov %al, digit
	mov $digit, %esi
	push %ecx
	call puts
	pop %ecx
	pop %eax
	loop 1b
	ret

puts:                                /* ESI: a NUL-terminated string, to COM1 */
	push %ebx
0:	lodsb
	test %al, %al
	jz 2f
	mov %al, %bl
1:	mov $0x3fd, %dx
	in %dx, %al
	test $0x20, %al
	jz 1b
	mov $0x3f8, %dx
	mov %bl, %al
	out %al, %dx
	jmp 0b
2:	pop %ebx
	ret

	.data
pass_magic:	.asciz "PASS: low: EAX holds the multiboot magic\n"
fail_magic:	.asciz "FAIL: low: EAX holds the multiboot magic\n"
pass_info:	.asciz "PASS: low: the info block is at 0x9000-0xffff\n"
fail_info:	.asciz "FAIL: low: the info block is at 0x9000-0xffff\n"
pass_cmd:	.asciz "PASS: low: the kernel's own bytes won over the info block\n"
fail_cmd:	.asciz "FAIL: low: the kernel's own bytes won over the info block\n"
summary:	.asciz "SUMMARY: 3 tests"
comma:		.asciz ", "
digit:		.asciz "0"
summary_fail:	.asciz " unexpected failures"
nl:		.asciz "\n"
info_ebx:	.asciz "INFO: low: multiboot info at 0x"
hexdigits:	.ascii "0123456789abcdef"

	.section .free, "aw"
	.fill 0x7000, 1, 0x5a        /* 0x9000-0xffff: the kernel's, the information's too */

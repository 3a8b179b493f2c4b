/* mb_elf64 - an ELF64 file whose multiboot header carries its load addresses (flag 16, the
 * "a.out kludge").  QEMU's -kernel boots such a file as multiboot, through the header, at
 * its 32-bit entry; so must pyvmm.  Booted by pyvmm's own ELF64 convention instead, it
 * would start at e_entry in long mode, which reports the mistake. */
	.section .multiboot, "a"
	.balign 4
mb_header:
	.long 0x1BADB002, 0x10003, -(0x1BADB002 + 0x10003)
	.long mb_header, __load_start, __load_end, __bss_end, entry32

	.text
	.code32
entry32:
	cli
	mov $pass, %esi
	cmp $0x2BADB002, %eax
	je 1f
	mov $fail32, %esi
1:	lodsb
	test %al, %al
	jz 3f
	mov %al, %bl
2:	mov $0x3fd, %dx
	in %dx, %al
	test $0x20, %al
	jz 2b
	mov $0x3f8, %dx
	mov %bl, %al
	out %al, %dx
	jmp 1b
3:	xor %eax, %eax
	mov $0xf4, %dx
	out %eax, %dx
4:	hlt
	jmp 4b

	.code64
	.globl _start
_start:                              /* e_entry: reached only when booted as pyvmm's ELF64 */
	mov $1, %eax
	mov $0xf4, %dx
	out %eax, %dx
5:	hlt
	jmp 5b

	.data
pass:	.ascii "PASS: elf64: an ELF64 with an address multiboot header boots as multiboot\n"
	.asciz "SUMMARY: 1 tests\n"
fail32:	.asciz "FAIL: elf64: no multiboot magic in EAX\nSUMMARY: 1 tests, 1 unexpected failures\n"

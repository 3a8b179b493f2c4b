/* protocol - exercises the test protocol itself (tests/integration/test_protocol.py).
 *
 *   sync       GUEST_SYNC with and without arguments, GUEST_PRINTF, GUEST_DONE
 *   assert-eq  GUEST_ASSERT_EQ that fails (file, line, expression and both values)
 *   assert     GUEST_ASSERT that fails
 *   ud         ud2 with the IDT installed and no #UD handler: an exception event
 *   handled    ud2 with a #UD handler that skips it, then GUEST_DONE
 *   high       a ucall struct placed above 4 GiB (needs RAM there)
 *   badptr     RDI pointing outside RAM: the host reports it, nothing breaks
 *   smp        every vCPU says GUEST_SYNC(its index) once
 */
#include <pyvmm/guest.h>

static void skip_ud2(struct ex_regs *r) { r->rip += 2; }

void ap_main(uint32_t index)
{
	GUEST_SYNC(100 + index + 1);
	__atomic_add_fetch(&ap_started, 1, __ATOMIC_SEQ_CST);
	for (;;)
		__asm__ volatile("cli; hlt");
}

int main(struct boot_info *bi, const char *cmdline)
{
	idt_install();
	if (!strcmp(cmdline, "sync")) {
		GUEST_SYNC(1, 10, 20);
		GUEST_SYNC(2);
		GUEST_PRINTF("hello from the guest: %d %s", 42, "ok");
		GUEST_DONE();
	}
	if (!strcmp(cmdline, "assert-eq")) {
		uint64_t three = 3;
		GUEST_ASSERT_EQ(three, 4);
	}
	if (!strcmp(cmdline, "assert"))
		GUEST_ASSERT(bi->ncpus == 99);
	if (!strcmp(cmdline, "ud"))
		__asm__ volatile("ud2");
	if (!strcmp(cmdline, "handled")) {
		idt_set_handler(6, skip_ud2);
		__asm__ volatile("ud2");
		GUEST_DONE();
	}
	if (!strcmp(cmdline, "high")) {
		struct ucall *uc = (struct ucall *)0x100000000ul;
		memset(uc, 0, sizeof(*uc));
		uc->cmd = UCALL_SYNC;
		uc->nargs = 2;
		uc->args[0] = 7;
		uc->args[1] = (uint64_t)uc;
		ucall(uc);
		GUEST_DONE();
	}
	if (!strcmp(cmdline, "badptr")) {
		ucall((struct ucall *)0xdead0000000ul);
		GUEST_DONE();
	}
	if (!strcmp(cmdline, "smp")) {
		GUEST_SYNC(100);
		unsigned got = smp_start_aps(bi->ncpus - 1);
		GUEST_ASSERT_EQ(got, bi->ncpus - 1);
		GUEST_DONE();
	}
	GUEST_PRINTF("protocol: unknown mode \"%s\"", cmdline);
	return 99;
}

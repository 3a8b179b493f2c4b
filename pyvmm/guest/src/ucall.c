/* ucall.c - GUEST_SYNC / GUEST_ASSERT / GUEST_PRINTF / GUEST_DONE over one port. */
#include <stdarg.h>

#include <pyvmm/rt.h>
#include <pyvmm/ucall.h>
#include <pyvmm/user.h>

/* at CPL3 where the host ignores the I/O bitmap (user.h) the OUT would #GP: the runtime
 * makes it for user code, with RDI (the struct's address, which the host reads) unchanged */
void ucall(struct ucall *uc)
{
	if (guest_user_syscalls()) {
		guest_syscall(GUEST_SYS_UCALL, (long)uc, 0, 0);
		return;
	}
	__asm__ volatile("outb %%al, %%dx" :: "a"(0), "d"((uint16_t)UCALL_PORT), "D"(uc) : "memory");
}

void guest_sync(uint64_t stage, int nargs, ...)
{
	struct ucall uc = { .cmd = UCALL_SYNC, .nargs = (uint64_t)nargs + 1 };
	va_list ap;
	va_start(ap, nargs);
	uc.args[0] = stage;
	for (int i = 0; i < nargs && i + 1 < UCALL_MAX_ARGS; i++)
		uc.args[i + 1] = va_arg(ap, uint64_t);
	va_end(ap);
	ucall(&uc);
}

__attribute__((noreturn)) void guest_assert_fail(const char *file, int line, const char *expr,
						 int nargs, uint64_t a, uint64_t b)
{
	struct ucall uc = { .cmd = UCALL_ASSERT, .nargs = (uint64_t)nargs, .file = (uint64_t)file,
			    .line = (uint64_t)line, .expr = (uint64_t)expr };
	uc.args[0] = a;
	uc.args[1] = b;
	ucall(&uc);
	exit(0x7f); /* the host stops at the ucall; this is for hosts that ignore it */
}

void guest_printf(const char *fmt, ...)
{
	struct ucall uc = { .cmd = UCALL_PRINT };
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(uc.buf, sizeof(uc.buf), fmt, ap);
	va_end(ap);
	ucall(&uc);
}

__attribute__((noreturn)) void guest_done(void)
{
	struct ucall uc = { .cmd = UCALL_DONE };
	ucall(&uc);
	exit(0);
}

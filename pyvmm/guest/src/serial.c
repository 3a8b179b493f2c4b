/* serial.c - console output: a polled 16550 at COM1, one line at a time across vCPUs. */
#include <pyvmm/rt.h>
#include <pyvmm/user.h>

#include "internal.h"

static volatile uint32_t print_lock;

/* at CPL3 where the host ignores the I/O bitmap (user.h) the port is the runtime's: one
 * system call per character */
void putc(char c)
{
	if (guest_user_syscalls()) {
		guest_syscall(GUEST_SYS_WRITE, (long)&c, 1, 0);
		return;
	}
	while (!(inb(PORT_COM1 + 5) & 0x20)) /* LSR.THRE */
		cpu_relax();
	outb(PORT_COM1, (uint8_t)c);
}

/* held around a line (puts) or a whole printf, so vCPUs do not interleave */
void rt_print_lock(void)
{
	while (__atomic_exchange_n(&print_lock, 1, __ATOMIC_ACQUIRE))
		cpu_relax();
}

void rt_print_unlock(void) { __atomic_store_n(&print_lock, 0, __ATOMIC_RELEASE); }

/* C's puts: the string, then a newline, as one line (no other vCPU's output in between) */
int puts(const char *s)
{
	if (guest_user_syscalls()) {
		guest_syscall(GUEST_SYS_WRITE, (long)s, (long)strlen(s), 1);
		return 1;
	}
	rt_print_lock();
	while (*s)
		putc(*s++);
	putc('\n');
	rt_print_unlock();
	return 1;
}

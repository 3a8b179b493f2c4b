/* printf.c - printf, vprintf and vsnprintf: %d %i %u %x %p %s %c, width, '0' pad, l/ll. */
#include <pyvmm/rt.h>
#include <pyvmm/user.h>

#include "internal.h"

/* One formatter, two sinks: the serial port (printf) and a buffer (vsnprintf). */
struct sink {
	void (*put)(struct sink *, char);
	char *buf;
	size_t len, cap;
};

static void put_serial(struct sink *s, char c) { (void)s; putc(c); }

static void put_buf(struct sink *s, char c)
{
	if (s->len + 1 < s->cap)
		s->buf[s->len] = c;
	s->len++;
}

/* at CPL3 where the host ignores the I/O bitmap (user.h): a buffer written through the
 * runtime's system call when full */
static void put_user(struct sink *s, char c)
{
	s->buf[s->len++] = c;
	if (s->len == s->cap) {
		guest_syscall(GUEST_SYS_WRITE, (long)s->buf, (long)s->len, 0);
		s->len = 0;
	}
}

static void put_num(struct sink *o, uint64_t v, unsigned base, int width, char pad, int neg)
{
	char buf[24];
	int n = 0;
	do {
		unsigned d = v % base;
		buf[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
		v /= base;
	} while (v);
	if (neg)
		buf[n++] = '-';
	while (n < width--)
		o->put(o, pad);
	while (n)
		o->put(o, buf[--n]);
}

static void format(struct sink *o, const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			o->put(o, *fmt);
			continue;
		}
		fmt++;
		char pad = ' ';
		int width = 0, lng = 0;
		if (*fmt == '0')
			pad = '0', fmt++;
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l')
			lng++, fmt++;
		switch (*fmt) {
		case 'd': case 'i': {
			int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
			put_num(o, v < 0 ? -(uint64_t)v : (uint64_t)v, 10, width, pad, v < 0);
			break;
		}
		case 'u':
			put_num(o, lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10, width, pad, 0);
			break;
		case 'x':
			put_num(o, lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16, width, pad, 0);
			break;
		case 'p':
			o->put(o, '0'), o->put(o, 'x');
			put_num(o, (uint64_t)va_arg(ap, void *), 16, width, pad, 0);
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			while (s && *s)
				o->put(o, *s++);
			break;
		}
		case 'c':
			o->put(o, (char)va_arg(ap, int));
			break;
		default:
			o->put(o, '%');
			o->put(o, *fmt);
		}
	}
}

int vprintf(const char *fmt, va_list ap)
{
	if (guest_user_syscalls()) {
		char buf[128];
		struct sink u = { .put = put_user, .buf = buf, .cap = sizeof(buf) };
		format(&u, fmt, ap);
		if (u.len)
			guest_syscall(GUEST_SYS_WRITE, (long)buf, (long)u.len, 0);
		return 0;
	}
	struct sink o = { .put = put_serial };
	rt_print_lock();
	format(&o, fmt, ap);
	rt_print_unlock();
	return 0;
}

int vsnprintf(char *buf, size_t cap, const char *fmt, va_list ap)
{
	struct sink o = { .put = put_buf, .buf = buf, .cap = cap };
	format(&o, fmt, ap);
	if (cap)
		buf[o.len < cap ? o.len : cap - 1] = 0;
	return (int)o.len;
}

int printf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	return 0;
}

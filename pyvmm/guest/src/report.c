/* report.c - kvm-unit-tests style result lines (report.h).  One lock for every vCPU. */
#include <stdarg.h>

#include <pyvmm/report.h>
#include <pyvmm/rt.h>

static unsigned tests, failures, xfailures, skipped;
static char prefixes[256];
static volatile uint32_t lock_word;

static void lock(void)
{
	while (__atomic_exchange_n(&lock_word, 1, __ATOMIC_ACQUIRE))
		cpu_relax();
}

static void unlock(void) { __atomic_store_n(&lock_word, 0, __ATOMIC_RELEASE); }

static size_t prefix_len[16];
static unsigned depth;

void report_prefix_push(const char *prefix)
{
	lock();
	size_t n = strlen(prefixes), m = strlen(prefix);
	if (depth < 16) {
		prefix_len[depth++] = n;
		if (n + m + 3 < sizeof(prefixes)) {
			memcpy(prefixes + n, prefix, m);
			memcpy(prefixes + n + m, ": ", 3);
		}
	}
	unlock();
}

void report_prefix_pop(void)
{
	lock();
	if (depth)
		prefixes[prefix_len[--depth]] = 0;
	unlock();
}

static void line(const char *what, const char *fmt, va_list ap)
{
	char buf[256];
	vsnprintf(buf, sizeof(buf), fmt, ap);
	printf("%s: %s%s\n", what, prefixes, buf);
}

static void va_report(int pass, int xfail, int skip, const char *fmt, va_list ap)
{
	lock();
	tests++;
	if (skip) {
		skipped++;
		line("SKIP", fmt, ap);
	} else if (xfail) {
		line(pass ? "XPASS" : "XFAIL", fmt, ap);
		if (pass)
			failures++;
		else
			xfailures++;
	} else {
		line(pass ? "PASS" : "FAIL", fmt, ap);
		if (!pass)
			failures++;
	}
	unlock();
}

#define VA(call) do { va_list ap; va_start(ap, fmt); call; va_end(ap); } while (0)

void report(int pass, const char *fmt, ...) { VA(va_report(pass, 0, 0, fmt, ap)); }
void report_pass(const char *fmt, ...) { VA(va_report(1, 0, 0, fmt, ap)); }
void report_fail(const char *fmt, ...) { VA(va_report(0, 0, 0, fmt, ap)); }
void report_skip(const char *fmt, ...) { VA(va_report(0, 0, 1, fmt, ap)); }
void report_xfail(int xfail, int pass, const char *fmt, ...) { VA(va_report(pass, xfail, 0, fmt, ap)); }

void report_info(const char *fmt, ...)
{
	lock();
	VA(line("INFO", fmt, ap));
	unlock();
}

int report_summary(void)
{
	lock();
	printf("SUMMARY: %u tests", tests);
	if (failures)
		printf(", %u unexpected failures", failures);
	if (xfailures)
		printf(", %u expected failures", xfailures);
	if (skipped)
		printf(", %u skipped", skipped);
	printf("\n");
	unlock();
	if (tests && tests == skipped)
		return REPORT_SKIP_STATUS;
	return failures ? 1 : 0;
}

/* ucall.h - the guest side of pyvmm's test protocol (README, "Test protocol").
 *
 * A guest reports by filling a struct ucall and executing one OUT to UCALL_PORT with the
 * struct's address in RDI.  The host reads RDI from kvm_run->s.regs (KVM_CAP_SYNC_REGS,
 * no extra ioctl) and the struct with bounds-checked reads, so the struct may live
 * anywhere in RAM, above 4 GiB too.  Every macro works on every vCPU.
 */
#ifndef PYVMM_UCALL_H
#define PYVMM_UCALL_H

#include <stdint.h>

#define UCALL_PORT 0x1000
#define UCALL_MAX_ARGS 6
#define UCALL_BUF 256

enum { UCALL_SYNC = 1, UCALL_ASSERT = 2, UCALL_PRINT = 3, UCALL_DONE = 4, UCALL_EXCEPTION = 5 };

struct ucall {
	uint64_t cmd;
	uint64_t nargs;
	uint64_t args[UCALL_MAX_ARGS];
	uint64_t file; /* const char * */
	uint64_t line;
	uint64_t expr; /* const char * */
	char buf[UCALL_BUF];
};

void ucall(struct ucall *uc);
void guest_sync(uint64_t stage, int nargs, ...);
__attribute__((noreturn)) void guest_assert_fail(const char *file, int line, const char *expr,
						 int nargs, uint64_t a, uint64_t b);
void guest_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
__attribute__((noreturn)) void guest_done(void);

#define UCALL_NARGS_(_0, _1, _2, _3, _4, _5, _6, N, ...) N
#define UCALL_NARGS(...) UCALL_NARGS_(0, ##__VA_ARGS__, 6, 5, 4, 3, 2, 1, 0)

/* GUEST_SYNC(stage, args...): stop at a sync point; the host's handler runs, then the
 * guest continues.  Up to 5 integer arguments after the stage (a compile error beyond). */
#define GUEST_SYNC(stage, ...)                                                            \
	do {                                                                              \
		_Static_assert(UCALL_NARGS(__VA_ARGS__) < UCALL_MAX_ARGS,                  \
			       "GUEST_SYNC carries at most 5 values after the stage");      \
		guest_sync((uint64_t)(stage), UCALL_NARGS(__VA_ARGS__), ##__VA_ARGS__);   \
	} while (0)
#define GUEST_ASSERT(cond) \
	do { if (!(cond)) guest_assert_fail(__FILE__, __LINE__, #cond, 0, 0, 0); } while (0)
#define GUEST_ASSERT_EQ(a, b)                                                            \
	do {                                                                             \
		uint64_t a_ = (uint64_t)(a), b_ = (uint64_t)(b);                         \
		if (a_ != b_)                                                            \
			guest_assert_fail(__FILE__, __LINE__, #a " == " #b, 2, a_, b_);  \
	} while (0)
#define GUEST_PRINTF(...) guest_printf(__VA_ARGS__)
#define GUEST_DONE() guest_done()

#endif

/* report.h - test results as kvm-unit-tests prints them: one line per check, "PASS: ...",
 * "FAIL: ...", "SKIP: ...", then "SUMMARY: N tests[, M unexpected failures][, K skipped]".
 * `pyvmm suite` (and kvm-unit-tests' own runner) read these lines; exit with
 * report_summary()'s value: 0 all passed, 1 a failure, 38 all skipped (QEMU's debug-exit
 * makes that 77, the skip status of kvm-unit-tests and autotools). */
#ifndef PYVMM_REPORT_H
#define PYVMM_REPORT_H

void report(int pass, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void report_pass(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void report_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void report_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void report_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* an expected failure: XFAIL when it fails, XPASS (a failure) when it passes */
void report_xfail(int xfail, int pass, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void report_prefix_push(const char *prefix);
void report_prefix_pop(void);
int report_summary(void);

#define REPORT_SKIP_STATUS (77 >> 1)

#endif

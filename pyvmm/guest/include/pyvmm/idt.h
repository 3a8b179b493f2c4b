/* idt.h - the guest's IDT: a handler per vector; unhandled exceptions are reported to the
 * host (vector, error code, CR2, RIP) through the test protocol and stop the test. */
#ifndef PYVMM_IDT_H
#define PYVMM_IDT_H

#include <stdint.h>

struct ex_regs {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector, error_code, rip, cs, rflags, rsp, ss;
};
typedef void (*ex_handler_t)(struct ex_regs *);

void idt_install(void);
void idt_set_handler(int vector, ex_handler_t handler);
void idt_ensure_loaded(void); /* idt_install() unless this vCPU has loaded it already */

/* Expecting a fault: after idt_catch_faults(), an instruction run through GUEST_TRY that
 * raises #UD, #GP or #PF resumes right after itself, and GUEST_TRY is 0 (1 when it did not
 * fault); fault_vector / fault_error_code / fault_cr2 describe the last fault caught.
 * The second argument is the rest of an extended asm statement, starting after its first
 * colon: outputs : inputs : clobbers (add "memory" when the instruction touches memory).
 *
 *   uint64_t v;
 *   int ok = GUEST_TRY("rdmsr", "=a"(v) : "c"(0x1234) : "rdx", "memory");
 *
 * A fault outside GUEST_TRY is reported like any unhandled exception (vector, RIP).  One
 * GUEST_TRY at a time per guest: fault_resume is global, not per vCPU. */
extern volatile uint64_t fault_vector, fault_error_code, fault_cr2, fault_resume;
extern volatile int faulted;
void idt_catch_faults(void);
#define GUEST_TRY(insn, ...)                                                               \
	({                                                                                 \
		faulted = 0;                                                               \
		__asm__ volatile("movq $.Lguest_try_%=, fault_resume(%%rip)\n\t" insn        \
				 "\n.Lguest_try_%=:\tmovq $0, fault_resume(%%rip)"           \
				 : __VA_ARGS__);                                            \
		!faulted;                                                                  \
	})
/* Report an exception as unhandled (the host ends the run naming vector and RIP). */
__attribute__((noreturn)) void idt_report_unhandled(struct ex_regs *r);

static inline uint64_t read_cr2(void) { uint64_t v; __asm__ volatile("mov %%cr2, %0" : "=r"(v)); return v; }
static inline uint64_t read_cr3(void) { uint64_t v; __asm__ volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static inline void write_cr3(uint64_t v) { __asm__ volatile("mov %0, %%cr3" :: "r"(v) : "memory"); }
static inline void invlpg(uint64_t va) { __asm__ volatile("invlpg (%0)" :: "r"(va) : "memory"); }
static inline uint64_t rdmsr(uint32_t msr)
{
	uint32_t lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((uint64_t)hi << 32) | lo;
}
static inline void wrmsr(uint32_t msr, uint64_t v)
{
	__asm__ volatile("wrmsr" :: "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)) : "memory");
}
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
/* STI;HLT: the interrupt shadow of STI makes the pair atomic, so no wake-up is lost */
static inline void safe_halt(void) { __asm__ volatile("sti; hlt" ::: "memory"); }

#endif

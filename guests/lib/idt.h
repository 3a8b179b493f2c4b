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

/* Expecting a fault: idt_catch_faults() makes #UD, #GP and #PF resume at the address the
 * faulting code left in RBX; GUEST_TRY(insn) runs `insn` that way and is 1 when it did not
 * fault.  fault_vector / fault_error_code / fault_cr2 describe the last fault caught. */
extern volatile uint64_t fault_vector, fault_error_code, fault_cr2;
extern volatile int faulted;
void idt_catch_faults(void);
#define GUEST_TRY(insn, ...)                                                               \
	({                                                                                 \
		faulted = 0;                                                               \
		__asm__ volatile("lea 1f(%%rip), %%rbx\n\t" insn "\n1:" __VA_ARGS__);     \
		!faulted;                                                                  \
	})

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

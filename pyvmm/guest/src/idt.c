/* idt.c - IDT set-up and dispatch (Intel SDM vol. 3A ch. 6.14: 64-bit interrupt gates). */
#include <pyvmm/idt.h>
#include <pyvmm/rt.h>
#include <pyvmm/ucall.h>

#include "internal.h"

struct idt_gate {
	uint16_t off0, selector;
	uint8_t ist, type_attr;
	uint16_t off1;
	uint32_t off2, reserved;
} __attribute__((packed));

static struct idt_gate idt[256] __attribute__((aligned(16)));
static ex_handler_t handlers[256];
extern char isr_stubs[], guest_ud_entry[];

static struct idt_gate gate(uint64_t a, uint8_t type_attr)
{
	return (struct idt_gate){ .off0 = (uint16_t)a, .selector = 0x08, .type_attr = type_attr,
				  .off1 = (uint16_t)(a >> 16), .off2 = (uint32_t)(a >> 32) };
}

void idt_install(void)
{
	for (int v = 0; v < 256; v++)
		idt[v] = gate((uint64_t)isr_stubs + (uint64_t)v * 16, 0x8E);
	/* #UD: the end of a user call and user mode's system calls first (user_entry.S), then
	 * isr_stubs' vector 6.  A trap gate: IF stays as it was, so the end of a user call
	 * made with IF set (user code keeps the caller's IF) needs no POPFQ; the other paths
	 * clear it themselves. */
	idt[6] = gate((uint64_t)guest_ud_entry, 0x8F);
	struct __attribute__((packed)) { uint16_t limit; uint64_t base; } idtr = { sizeof(idt) - 1, (uint64_t)idt };
	__asm__ volatile("lidt %0" :: "m"(idtr));
}

/* for a vCPU's first user call (user.c): this IDT, unless it is loaded already */
void idt_ensure_loaded(void)
{
	struct __attribute__((packed)) { uint16_t limit; uint64_t base; } idtr;
	__asm__ volatile("sidt %0" : "=m"(idtr));
	if (idtr.base != (uint64_t)idt || idtr.limit != sizeof(idt) - 1) {
		idt_install();
		return;
	}
}

void idt_set_handler(int vector, ex_handler_t handler) { handlers[vector & 255] = handler; }

volatile uint64_t fault_vector, fault_error_code, fault_cr2, fault_resume;
volatile int faulted;

/* #UD/#GP/#PF after idt_catch_faults(): inside GUEST_TRY, resume after the instruction;
 * anywhere else it is a real fault, reported like any unhandled exception (resuming at a
 * stale address would fault again and again until the vCPU triple-faults) */
static void resume_after_try(struct ex_regs *r)
{
	uint64_t to = fault_resume;
	if (!to)
		idt_report_unhandled(r);
	fault_resume = 0;
	faulted = 1;
	fault_vector = r->vector;
	fault_error_code = r->error_code;
	fault_cr2 = read_cr2();
	r->rip = to;
}

void idt_catch_faults(void)
{
	idt_set_handler(6, resume_after_try);
	idt_set_handler(13, resume_after_try);
	idt_set_handler(14, resume_after_try);
}

__attribute__((noreturn)) void idt_report_unhandled(struct ex_regs *r)
{
	struct ucall uc = { .cmd = UCALL_EXCEPTION, .nargs = 5 };
	uc.args[0] = r->vector;
	uc.args[1] = r->error_code;
	uc.args[2] = read_cr2();
	uc.args[3] = r->rip;
	uc.args[4] = r->cs; /* RPL 3: the fault was in user code (the host says CPL3) */
	ucall(&uc);
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* An exception at CPL3 (user.h) belongs to the user call, whatever handler CPL0 code has
 * set for that vector: GUEST_USER_TRY_CALL gets it, else it is reported.  Interrupts at
 * CPL3 go to their handlers as at CPL0. */
void idt_dispatch(struct ex_regs *r)
{
	if ((r->cs & 3) == 3 && r->vector < 32)
		user_fault(r); /* does not return */
	ex_handler_t h = handlers[r->vector & 255];
	if (h) {
		h(r);
		return;
	}
	idt_report_unhandled(r);
}

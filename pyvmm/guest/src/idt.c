/* idt.c - IDT set-up and dispatch (Intel SDM vol. 3A ch. 6.14: 64-bit interrupt gates). */
#include <pyvmm/idt.h>
#include <pyvmm/rt.h>
#include <pyvmm/ucall.h>

struct idt_gate {
	uint16_t off0, selector;
	uint8_t ist, type_attr;
	uint16_t off1;
	uint32_t off2, reserved;
} __attribute__((packed));

static struct idt_gate idt[256] __attribute__((aligned(16)));
static ex_handler_t handlers[256];
extern char isr_stubs[];

void idt_install(void)
{
	for (int v = 0; v < 256; v++) {
		uint64_t a = (uint64_t)isr_stubs + (uint64_t)v * 16;
		idt[v] = (struct idt_gate){ .off0 = (uint16_t)a, .selector = 0x08, .type_attr = 0x8E,
					    .off1 = (uint16_t)(a >> 16), .off2 = (uint32_t)(a >> 32) };
	}
	struct __attribute__((packed)) { uint16_t limit; uint64_t base; } idtr = { sizeof(idt) - 1, (uint64_t)idt };
	__asm__ volatile("lidt %0" :: "m"(idtr));
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
	struct ucall uc = { .cmd = UCALL_EXCEPTION, .nargs = 4 };
	uc.args[0] = r->vector;
	uc.args[1] = r->error_code;
	uc.args[2] = read_cr2();
	uc.args[3] = r->rip;
	ucall(&uc);
	for (;;)
		__asm__ volatile("cli; hlt");
}

void idt_dispatch(struct ex_regs *r)
{
	ex_handler_t h = handlers[r->vector & 255];
	if (h) {
		h(r);
		return;
	}
	idt_report_unhandled(r);
}

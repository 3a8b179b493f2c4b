/* idt.c - IDT set-up and dispatch (Intel SDM vol. 3A ch. 6.14: 64-bit interrupt gates). */
#include "idt.h"
#include "rt.h"
#include "ucall.h"

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

volatile uint64_t fault_vector, fault_error_code, fault_cr2;
volatile int faulted;

static void resume_at_rbx(struct ex_regs *r)
{
	faulted = 1;
	fault_vector = r->vector;
	fault_error_code = r->error_code;
	fault_cr2 = read_cr2();
	r->rip = r->rbx;
}

void idt_catch_faults(void)
{
	idt_set_handler(6, resume_at_rbx);
	idt_set_handler(13, resume_at_rbx);
	idt_set_handler(14, resume_at_rbx);
}

void idt_dispatch(struct ex_regs *r)
{
	ex_handler_t h = handlers[r->vector & 255];
	if (h) {
		h(r);
		return;
	}
	struct ucall uc = { .cmd = UCALL_EXCEPTION, .nargs = 4 };
	uc.args[0] = r->vector;
	uc.args[1] = r->error_code;
	uc.args[2] = read_cr2();
	uc.args[3] = r->rip;
	ucall(&uc);
	for (;;)
		__asm__ volatile("cli; hlt");
}

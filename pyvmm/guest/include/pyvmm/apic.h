/* apic.h - local APIC helpers, xAPIC (MMIO at 0xFEE00000) and x2APIC (MSRs 0x800+),
 * Intel SDM vol. 3A ch. 11. */
#ifndef PYVMM_APIC_H
#define PYVMM_APIC_H

#include "idt.h"
#include "rt.h"

#define APIC_ID 0x20
#define APIC_VERSION 0x30
#define APIC_TPR 0x80
#define APIC_EOI 0xB0
#define APIC_SVR 0xF0
#define APIC_ICR_LO 0x300
#define APIC_ICR_HI 0x310
#define APIC_LVTT 0x320
#define APIC_TMICT 0x380
#define APIC_TMCCT 0x390
#define APIC_TDCR 0x3E0
#define LVTT_PERIODIC (1u << 17)
#define LVTT_TSC_DEADLINE (2u << 17)
#define LVT_MASKED (1u << 16)
#define MSR_APIC_BASE 0x1B
#define MSR_TSC_DEADLINE 0x6E0
#define APIC_BASE_X2APIC (1u << 10)
#define APIC_BASE_ENABLE (1u << 11)

extern int apic_x2;

static inline uint32_t apic_read(uint32_t reg)
{
	return apic_x2 ? (uint32_t)rdmsr(0x800 + (reg >> 4)) : mmio_read32(LAPIC_BASE + reg);
}
static inline void apic_write(uint32_t reg, uint32_t v)
{
	if (apic_x2)
		wrmsr(0x800 + (reg >> 4), v);
	else
		mmio_write32(LAPIC_BASE + reg, v);
}
static inline void apic_eoi(void) { apic_write(APIC_EOI, 0); }
/* xAPIC or x2APIC (x2: set APIC_BASE.EXTD), software-enabled, spurious vector 0xFF */
void apic_enable(int x2apic);
static inline uint32_t apic_id(void)
{
	return apic_x2 ? apic_read(APIC_ID) : apic_read(APIC_ID) >> 24;
}
/* send IPI `vector` to `dest` (fixed delivery) */
void apic_send_ipi(uint32_t dest, uint8_t vector);

#endif

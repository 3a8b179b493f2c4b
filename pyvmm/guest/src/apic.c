#include <pyvmm/apic.h>

int apic_x2;

void apic_enable(int x2apic)
{
	uint64_t base = rdmsr(MSR_APIC_BASE) | APIC_BASE_ENABLE;
	if (x2apic)
		base |= APIC_BASE_X2APIC;
	wrmsr(MSR_APIC_BASE, base);
	apic_x2 = x2apic;
	apic_write(APIC_SVR, 0x1FF);
	apic_write(APIC_TPR, 0);
}

void apic_send_ipi(uint32_t dest, uint8_t vector)
{
	if (apic_x2) {
		wrmsr(0x830, ((uint64_t)dest << 32) | vector); /* ICR is one 64-bit MSR */
		return;
	}
	apic_write(APIC_ICR_HI, dest << 24);
	apic_write(APIC_ICR_LO, vector);
}

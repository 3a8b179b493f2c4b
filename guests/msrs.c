/* msrs - the MSRs a guest expects (seed: rdmsrl_safe(MSR_IA32_CR_PAT), IA32_EFER, MTRRs)
 * and one MSR that KVM's MSR filter sends to a Python handler (userspace MSR exit).
 *
 * Syncs: 1 PAT at entry; 2 PAT after the guest's write; 3 EFER, EFER with SCE toggled;
 * 4 MTRRcap, MTRRdefType;
 * 5 the userspace MSR's value as read back; 6 whether reading a write-only userspace MSR
 * raised #GP.  The host checks the guest's view against KVM_GET_MSRS at the same points.
 */
#include <pyvmm/guest.h>

#define MSR_PAT 0x277
#define MSR_EFER 0xC0000080
#define MSR_MTRRCAP 0xFE
#define MSR_MTRR_DEF_TYPE 0x2FF
#define MSR_USER 0x1337       /* handled in Python by the test */
#define MSR_USER_WO 0x1338    /* write-only in Python: reading it must #GP */
#define PAT_GUEST 0x0007010600070106ul

int main(struct boot_info *bi, const char *cmdline)
{
	(void)bi, (void)cmdline;
	idt_install();
	idt_catch_faults();

	GUEST_SYNC(1, rdmsr(MSR_PAT));
	wrmsr(MSR_PAT, PAT_GUEST);
	GUEST_ASSERT_EQ(rdmsr(MSR_PAT), PAT_GUEST);
	GUEST_SYNC(2, rdmsr(MSR_PAT));

	uint64_t efer = rdmsr(MSR_EFER);
	GUEST_ASSERT((efer & 0xD00) == 0xD00); /* LME | LMA | NXE, as the VMM entered us */
	wrmsr(MSR_EFER, efer ^ 1);             /* toggle SCE (SYSCALL enable) */
	uint64_t toggled = rdmsr(MSR_EFER);
	GUEST_SYNC(3, efer, toggled);
	wrmsr(MSR_EFER, efer);

	uint64_t cap = rdmsr(MSR_MTRRCAP), def = rdmsr(MSR_MTRR_DEF_TYPE);
	GUEST_SYNC(4, cap, def);
	wrmsr(MSR_MTRR_DEF_TYPE, 1u << 11); /* enabled, default UC */
	GUEST_ASSERT_EQ(rdmsr(MSR_MTRR_DEF_TYPE), 1u << 11);
	wrmsr(MSR_MTRR_DEF_TYPE, def);

	wrmsr(MSR_USER, 0xabcdef);
	GUEST_SYNC(5, rdmsr(MSR_USER));

	uint64_t v = 0;
	int ok = GUEST_TRY("rdmsr", "=a"(v) : "c"(MSR_USER_WO) : "rdx", "memory");
	GUEST_SYNC(6, !ok, fault_vector);
	GUEST_DONE();
}

/* guest.c - the guest: its CPL0 half only enters user mode, where the parser runs natively
 * (on kvm_pvm CPL0 code is emulated; the parser would be ~2000x slower there). */
#include <pyvmm/guest.h>

long fuzz_tlv(long unused);

int main(struct boot_info *bi, const char *cmdline)
{
	(void)bi;
	(void)cmdline;
	return (int)GUEST_USER_CALL(fuzz_tlv, 0);
}

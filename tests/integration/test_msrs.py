"""MSRs: PAT, EFER, MTRRs as the guest and KVM see them; an MSR handled in Python."""

from __future__ import annotations

from pyvmm.x86.msrs import IA32_EFER, IA32_PAT, PAT_RESET

PAT_GUEST = 0x0007010600070106


def test_msrs(run_guest, guests):
    host_view = {}
    writes = []

    def setup(m):
        def at_sync(ev):
            vcpu = m.vcpus[ev.vcpu]
            host_view[ev.stage] = vcpu.get_msrs([IA32_PAT, IA32_EFER, 0x2FF])
        m.on_sync(at_sync)
        m.add_msr_handler(0x1337, read=lambda: writes[-1] + 1, write=writes.append)
        m.add_msr_handler(0x1338, write=writes.append)  # no read handler: #GP

    r = run_guest(guests / "msrs.elf", setup=setup)
    s = {e.stage: e.args[1:] for e in r.syncs()}
    assert s[1] == (PAT_RESET,)  # the power-on PAT the VMM set
    assert s[2] == (PAT_GUEST,) and host_view[2][IA32_PAT] == PAT_GUEST  # KVM agrees
    efer, toggled = s[3]
    assert efer & 0xD00 == 0xD00 and toggled == efer ^ 1  # SCE written and read back
    assert host_view[3][IA32_EFER] == toggled  # KVM holds the guest's write
    cap, def_type = s[4]
    assert cap & 0xFF >= 1 and def_type == host_view[4][0x2FF] == (1 << 11) | 6
    assert s[5] == (0xABCDEF + 1,) and writes == [0xABCDEF]  # went through Python
    assert s[6] == (1, 13)  # RDMSR of the write-only MSR: #GP
    # three MSR exits reached userspace; PAT/EFER/MTRR never left the kernel
    assert r.exit_counts.get("X86_WRMSR") == 1 and r.exit_counts.get("X86_RDMSR") == 2

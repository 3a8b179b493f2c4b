"""CPU modes and state: a guest that climbs from real mode to long mode; XSAVE/XCR0 state
read and written from the host."""

from __future__ import annotations

import pytest

from pyvmm.pytest_plugin import check


def test_real_mode_to_long_mode(pyvmm_machine, guests):
    m = pyvmm_machine(guests / "realmode.elf", cpus=2)
    tramp = m.image.symbols.address_of("ap_trampoline")
    m.memory.write_int(m.image.symbols.address_of("ap_cr3"), 4, m.plan.entry.cr3)
    m.enter_real_mode(tramp)
    r = check(m.run(timeout=30))
    _, entry_cr0, cr0, cr4, efer = r.syncs(1)[0].args
    assert entry_cr0 & 1 == 0  # PE clear: it really started in real mode
    assert cr0 & 0x80000001 == 0x80000001 and cr4 & 0x20 and efer & 0x500 == 0x500
    assert r.syncs(2) and r.syncs(3)  # and an AP took the same way after SIPI
    ap_entry_cr0, ap_cr0 = r.syncs(3)[0].args[1:]
    assert ap_entry_cr0 & 1 == 0 and ap_cr0 & 0x80000001 == 0x80000001
    # the climb (CR0/CR4/EFER writes, far jumps) never left KVM: only the 3 syncs and DONE
    assert r.exit_counts.get("IO") == 4 and set(r.exit_counts) <= {"IO", "INTR"}, r.exit_counts


def test_real_mode_entry_is_checked(pyvmm_machine, guests):
    m = pyvmm_machine(guests / "realmode.elf")
    with pytest.raises(ValueError, match="below 1 MiB"):
        m.enter_real_mode(0x100000)


def test_xsave_and_xcrs_from_the_host(pyvmm_machine, guests):
    m = pyvmm_machine(guests / "hello.elf")
    v = m.vcpus[0]
    area = bytearray(v.get_xsave())
    area[160:176] = bytes(range(1, 17))  # XMM0 in the legacy region (SDM vol. 1 13.4.1)
    area[512] |= 0x2  # XSTATE_BV: SSE state is in use, so KVM keeps it
    v.set_xsave(bytes(area))
    assert v.get_xsave()[160:176] == bytes(range(1, 17))
    xcr0 = v.get_xcrs()[0]
    assert xcr0 & 1  # x87 is always on
    v.set_xcrs({0: 0x3})
    assert v.get_xcrs()[0] == 0x3
    assert check(m.run(timeout=30)).ok  # the guest runs on with the state we gave it

"""Page faults, CR3 switches, demand mapping and the dirty log, seen from the guest and
from KVM's counters; the counters expected depend on the host's MMU kind (pyvmm info)."""

from __future__ import annotations

import struct

from pyvmm import Space
from pyvmm.hostinfo import detect

HOST = detect()


def test_cr3_address_spaces(run_guest, guests):
    at_sync = []

    def setup(m):
        m.on_sync(lambda ev: at_sync.append((ev.args, m.vcpus[0].get_sregs().cr3)))

    r = run_guest(guests / "cr3.elf", setup=setup)
    spaces = [(args, cr3) for args, cr3 in at_sync if args[0] == 1]
    assert len(spaces) == 3
    for i, ((_, idx, guest_cr3, value), host_cr3) in enumerate(spaces):
        assert idx == i and value == 0x1111 * (i + 1)
        assert guest_cr3 == host_cr3  # the host sees the CR3 the guest loaded
    assert len({cr3 for _, cr3 in spaces}) == 3
    assert [args for args, _ in at_sync if args[0] == 2] == [(2, 0xFEED)]
    vcpu = r.stats["vcpu0"]
    if not HOST.tdp:
        # shadow paging / kvm_pvm: KVM sees every INVLPG and flushes on CR3 loads
        assert vcpu.get("invlpg", 0) >= 1 and vcpu.get("tlb_flush", 0) >= 1, vcpu


def test_page_faults_demand_mapping_and_dirty_log(run_guest, guests):
    demand_reads = []
    dirty = {}

    def setup(m):
        logged = m.add_ram(0x20000000, 8 * 4096, log_dirty=True, name="logged")

        def demand(addr, size):
            demand_reads.append(addr)
            if not m.memory.is_ram(0x30000000):
                m.add_ram(0x30000000, 0x200000, name="demand")
                m.memory.write(0x30000000, struct.pack("<QQ", 0x1234, 0x5678))
            return m.memory.read_int(addr, size)

        m.add_handler(Space.MMIO, 0x30000000, 0x200000, read=demand, name="demand-map")
        m.on_sync(lambda ev: dirty.__setitem__(ev.stage, m.memory.dirty_pages(logged))
                  if ev.stage in (6, 7) else None)

    r = run_guest(guests / "paging.elf", "64", setup=setup)
    s = {e.stage: e.args[1:] for e in r.syncs()}
    n, first, retouch = s[1]
    assert n == 64 and first > 0 and retouch > 0
    assert s[2] == (0x0, 0x8000000000)  # not present, read
    assert s[3] == (0x3, 0x8000000008)  # present, write
    assert s[4] == (0x11, 0x8000000040)  # present, instruction fetch
    assert s[5] == (0x1234, 0x5678)
    assert demand_reads == [0x30000000]  # one exit; the second read hit the new memslot
    assert dirty[7] == [0x20001000, 0x20003000, 0x20005000]
    vcpu = r.stats["vcpu0"]
    if HOST.tdp:
        # EPT/NPT: first touches of fresh memory fault into the TDP MMU
        assert vcpu.get("pf_taken", 0) + vcpu.get("pf_fixed", 0) > 0, vcpu
    elif HOST.mmu == "pvm-shadow":
        # kvm_pvm: the emulator walks guest tables; guest #PFs are injected, no shadow faults
        assert vcpu.get("pf_guest", 0) >= 3 and vcpu.get("insn_emulation", 0) >= 2 * n
        assert vcpu.get("pf_fixed", 0) == 0
    else:
        assert vcpu.get("pf_fixed", 0) > 0, vcpu  # shadow paging fills SPTEs on faults

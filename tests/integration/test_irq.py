"""Interrupts through the in-kernel irqchip: KVM_IRQ_LINE -> IOAPIC -> LAPIC, irqfd,
PIT IRQ0, and IPIs both ways between two vCPUs; all delivered without userspace exits."""

from __future__ import annotations

import os


def test_irq_line_through_the_ioapic(run_guest, guests):
    status = []

    def setup(m):
        def raise_line(ev):
            if ev.stage == 1:
                status.append(m.vm.irq_line(5, 1))
                m.vm.irq_line(5, 0)
        m.on_sync(raise_line)

    r = run_guest(guests / "irq.elf", "ioapic", setup=setup)
    assert status and status[0] > 0  # KVM_IRQ_LINE_STATUS: delivered
    assert r.syncs(2)[0].args[1] == 1


def test_irqfd(run_guest, guests):
    efd = os.eventfd(0)
    try:
        def setup(m):
            m.vm.irqfd(efd, 10)
            m.on_sync(lambda ev: os.eventfd_write(efd, 1) if ev.stage == 1 else None)

        r = run_guest(guests / "irq.elf", "irqfd", setup=setup)
    finally:
        os.close(efd)
    assert r.syncs(2)[0].args[1] == 1
    assert r.exit_counts == {"IO": 3}  # two syncs and DONE: the interrupt needed no exit


def test_pit_irq0(run_guest, guests):
    r = run_guest(guests / "irq.elf", "pit", pit=True)
    got, _cycles = r.syncs(2)[0].args[1:]
    assert got >= 5
    # PIT (0x40/0x43) and PIC (0x21/0xa1) ports are KVM's: only the sync and DONE exit
    assert r.exit_counts == {"IO": 2}, r.exit_counts


def test_ipis_both_ways(run_guest, guests):
    r = run_guest(guests / "irq.elf", "ipi", cpus=2)
    pongs, per_round_trip, pings = r.syncs(2)[0].args[1:]
    assert pongs == 5 and pings == 5 and per_round_trip > 0
    # 10 IPIs, INIT and SIPI all stayed in KVM: the BSP's sync and DONE are the only exits
    # (INTR counts the VMM's own kick that stops the halted AP at the end)
    assert r.exit_counts.get("IO") == 2 and set(r.exit_counts) <= {"IO", "INTR"}, r.exit_counts
    assert set(r.vcpu_exit_counts[1]) <= {"INTR"}, r.vcpu_exit_counts
    # the AP waits for each ping in HLT and KVM counts every HLT it intercepts; whether a
    # wait ends in halt polling or after blocking (halt_wakeup) is the scheduler's luck, so
    # only HLTs are counted here: all but maybe the first ping found the AP halted
    assert r.stats["vcpu1"].get("halt_exits", 0) >= 4, r.stats["vcpu1"]

"""Real guests on the real /dev/kvm, through the embedding API."""

from __future__ import annotations

import pytest

from pyvmm import Machine, Space
from pyvmm._native import lib

TIMEOUT = 30  # generous: CPL0 guest code is emulated on kvm_pvm


def run(guests, cmdline="", timeout=TIMEOUT, **kw):
    with Machine.from_elf(guests / "selftest.elf", cmdline=cmdline, **kw) as m:
        return m.run(timeout=timeout)


def test_hello_output_status_and_counters(guests):
    with Machine.from_elf(guests / "hello.elf", mem="64M") as m:
        r = m.run(timeout=TIMEOUT)
    assert r.status == "exit" and r.exit_code == 0 and r.ok
    assert r.text == "Hello from a pyvmm guest: 1 vCPU(s), 64 MiB RAM\n"
    n = len(r.text)
    # one THR write and one LSR poll per byte, and the debug-exit write: all in C
    assert r.fast_hits == {"uart@0x3f8": n, "uart@0x3fd": n, "debug-exit@0xf4": 1, "post@0x80": 0}
    assert r.exit_counts == {"IO": 2 * n + 1}
    assert r.kvm_runs == 2 * n + 1  # exactly one ioctl per exit
    assert r.stats["vcpu0"]["exits"] >= 2 * n + 1  # KVM counted at least as many


@pytest.mark.parametrize("mode, value", [("exit", 7), ("exit", 0x1234), ("exit16", 0xBEEF),
                                         ("exit8", 42), ("exit", 0)])
def test_debug_exit_values(guests, mode, value):
    r = run(guests, f"{mode} {value}")
    assert (r.status, r.exit_code) == ("exit", value)


def test_timeout_stops_a_spinning_guest(guests):
    r = run(guests, "spin", timeout=0.5)
    assert r.status == "timeout" and "0.5 s" in r.message


def test_timeout_stops_a_halted_guest(guests):
    r = run(guests, "hlt", timeout=0.5)
    assert r.status == "timeout"
    # the vCPU sat in KVM_RUN (HLT in the in-kernel LAPIC) until the kick signal
    assert r.exit_counts.get("INTR", 0) >= 1 and r.exit_counts.get("IO", 0) == 0


def test_triple_fault_report(guests):
    r = run(guests, "triple")
    assert r.status == "crash"
    assert r.crash is not None and "triple fault" in r.crash.reason
    assert r.crash.symbol and r.crash.symbol.startswith("main")
    assert r.crash.insn[:2] == b"\x0f\x0b"  # the ud2 that started it
    assert "RIP=" in r.crash.format() and "CR3=" in r.crash.format()


def test_mmio_exit_reaches_a_python_handler(guests):
    cell = {}

    def write(addr, size, value):
        cell[addr] = (size, value)

    def read(addr, size):
        return cell.get(addr, (size, 0))[1]

    with Machine.from_elf(guests / "selftest.elf", cmdline="mmio 0xd0001000") as m:
        m.add_handler(Space.MMIO, 0xD0001000, 0x1000, read=read, write=write, name="cell")
        r = m.run(timeout=TIMEOUT)
    assert r.ok, r
    assert cell == {0xD0001000: (4, 0x1234ABCD)}
    assert "read 1234abcd" in r.text
    assert r.exit_counts["MMIO"] == 2


def test_write_to_a_read_only_slot_exits_and_is_dropped(guests):
    seen = []
    with Machine.from_elf(guests / "selftest.elf", cmdline="rowrite 0x10000000") as m:
        rom = m.add_ram(0x10000000, 0x1000, readonly=True, name="rom")
        m.memory.write(0x10000000, (0xC0FFEE).to_bytes(4, "little"))
        m.add_handler(Space.MMIO, 0x10000000, 0x1000, write=lambda a, s, v: seen.append((a, s, v)),
                      name="rom-writes")
        r = m.run(timeout=TIMEOUT)
        assert m.memory.read_int(rom.gpa, 4) == 0xC0FFEE
    assert r.ok, r.text
    assert seen == [(0x10000000, 4, 0xDEADBEEF)]
    assert "before c0ffee after c0ffee" in r.text


def test_unclaimed_io_lax_is_counted(guests):
    r = run(guests, "unclaimed")
    assert r.ok, r.text
    assert r.unclaimed == ["port 0x2f0: 2", "mmio 0xd0000000: 2"]


def test_unclaimed_io_strict_is_fatal_and_named(guests):
    r = run(guests, "unclaimed", strict_io=True)
    assert r.status == "io-error"
    assert "port 0x2f0" in r.message and "read" in r.message


def test_boot_info_and_entry_state(guests):
    with Machine.from_elf(guests / "selftest.elf", cmdline="bootinfo", mem="32M", cpus=1) as m:
        plan = m.plan.layout
        r = m.run(timeout=TIMEOUT)
    assert r.ok, r.text
    lines = r.text.splitlines()
    assert lines[0] == f"magic 4d565950 version 1 ram {32 << 20} ncpus 1"
    assert f"vmm {plan.vmm_base:x}+{plan.vmm_size:x}" in lines[1]
    rsp = int(lines[-1].split()[1], 16)
    assert plan.stack_base < rsp < plan.stack_top and plan.stack_size >= 64 * 1024
    assert any(line.startswith("mmap 0 ") and line.endswith(" 1") for line in lines)


def test_two_vcpus_started_by_init_sipi(guests):
    with Machine.from_elf(guests / "selftest.elf", cmdline="smp", cpus=2) as m:
        assert m.vcpus[1].get_mp_state() == lib.KVM_MP_STATE_UNINITIALIZED
        r = m.run(timeout=TIMEOUT)
    assert r.ok, r.text
    assert "smp: AP 1 running in long mode" in r.text
    assert "smp: 1 of 1 APs started" in r.text
    assert r.vcpu_exit_counts[1].get("IO", 0) > 0  # the AP printed through the UART itself


def test_post_port_is_answered_in_c(guests):
    r = run(guests, "post 50")
    assert r.ok
    assert r.fast_hits["post@0x80"] == 50
    assert r.exit_counts["IO"] == r.kvm_runs  # nothing went to Python


def test_python_loop_gives_the_same_run(guests):
    with Machine.from_elf(guests / "hello.elf") as m:
        r = m.run(timeout=TIMEOUT, python_loop=True)
    assert r.ok and r.text.startswith("Hello from a pyvmm guest")
    assert sum(r.fast_hits.values()) == 0 and r.exit_counts["IO"] == 2 * len(r.text) + 1


def test_emulation_failure_is_a_crash_with_the_instruction(guests):
    from pyvmm.hostinfo import detect

    host = detect()
    r = run(guests, "popcnt")
    if host.module != "kvm_pvm":
        # VMX/SVM run CPL0 code natively: popcnt just works
        assert r.ok, r.message
        pytest.skip(f"{host.module} runs CPL0 code natively; no emulation failure to show")
    assert r.status == "crash" and "emulation failure" in r.message
    assert r.crash.insn[:4] == bytes.fromhex("f3480fb8")  # popcnt r64, r/m64
    assert r.crash.symbol.startswith("main")


def test_guest_memory_access_is_bounds_checked(guests):
    from pyvmm.memory import GuestMemoryError

    with Machine.from_elf(guests / "hello.elf", mem="4M") as m:
        mem = m.memory
        assert len(mem.read(0x3FF000, 0x1000)) == 0x1000  # the last page is readable
        for gpa, n in ((0x3FF001, 0x1000), (0x400000, 1), (-1, 4), (0xFEE00000, 4), (1 << 60, 8)):
            with pytest.raises(GuestMemoryError):
                mem.read(gpa, n)
            with pytest.raises(GuestMemoryError):
                mem.write(gpa, b"\0" * max(n, 1))
        with pytest.raises(GuestMemoryError):
            m.add_ram(0x200000, 0x1000)  # overlaps RAM
        with pytest.raises(GuestMemoryError):
            m.add_ram(0x10000000, 0x1234)  # not page-aligned

"""The PC platform at the edges of a run: device threads at teardown, and a guest's S3
waking vector that firmware cannot resume at (issue 17)."""

from __future__ import annotations

from cli import pyvmm

from pyvmm import Machine

T = 30


def test_hpet_storm_running_at_exit_stops_before_the_vm_closes(guests):
    # the HPET's fastest periodic timer still firing when the kernel exits: its thread
    # raised KVM_IRQ_LINE on the closed VM fd (a traceback on stderr after status 0)
    for _ in range(3):
        p = pyvmm("run", str(guests / "pcplat.flat"), "--append", "hpet-storm", "--timeout", str(T))
        assert p.returncode == 0, (p.stdout, p.stderr)
        assert "PASS: hpet-storm: HPET running" in p.stdout
        assert p.stderr == ""


def test_hpet_thread_is_gone_after_close(guests):
    with Machine.from_file(guests / "pcplat.flat", cmdline="hpet-storm") as m:
        r = m.run(timeout=T)
        assert m.pc is not None
        hpet = m.pc.hpet
        assert r.status == "exit" and r.exit_code == 0, r.text
    assert hpet._thread is not None and not hpet._thread.is_alive()


def test_s3_waking_vector_above_1mib_is_a_guest_crash(guests):
    # the guest's own value: never a usage error (it was status 2, "real-mode entry ...")
    p = pyvmm("run", str(guests / "pcplat.flat"), "--append", "s3-high", "--timeout", str(T))
    assert p.returncode == 123, (p.stdout, p.stderr)
    assert p.stderr.strip().splitlines() == [
        "pyvmm: ACPI S3 resume: the FACS firmware waking vector 0x100000 is at or above 1 MiB, "
        "out of real mode's reach; the guest cannot resume"]
    with Machine.from_file(guests / "pcplat.flat", cmdline="s3-high") as m:
        r = m.run(timeout=T)
    assert r.status == "crash" and "waking vector 0x100000" in r.message


def test_s3_without_a_waking_vector_is_a_guest_crash(guests):
    with Machine.from_file(guests / "pcplat.flat", cmdline="s3-zero") as m:
        r = m.run(timeout=T)
    assert r.status == "crash" and "waking vector is 0" in r.message, r.message

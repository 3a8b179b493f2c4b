"""The project's guest tests, written against pyvmm's pytest plugin (installed with pyvmm:
fixtures ``run_guest`` and ``pyvmm_machine``; markers ``kvm``, ``requires``,
``guest_timeout``)."""

from pathlib import Path

import pytest

BUILD = Path(__file__).parent / "build"


@pytest.mark.guest_timeout(30)
@pytest.mark.parametrize("image", ["guest.elf", "guest.flat", "guest-by-hand.elf"])
def test_fib_with_an_answer_from_the_host(run_guest, image):
    def setup(m):
        addr = m.symbols.address_of("answer")

        def reply(ev):
            m.memory.write_int(addr, 8, ev.args[1] * 2)

        m.on_sync(reply)

    r = run_guest(BUILD / image, "fib 20", setup=setup)
    assert r.syncs(1)[0].args[1] == 6765
    assert "hello-project" in r.text
    assert r.stats["vcpu0"]["exits"] > 0  # KVM's own counters, read as int


def test_a_failing_assertion_is_reported_in_the_guests_words(run_guest):
    r = run_guest(BUILD / "guest.elf", "fail", expect="assert")
    assert r.assertion.file.endswith("guest.c") and r.assertion.args == (55, 56)


@pytest.mark.requires("smp")
def test_two_vcpus(pyvmm_machine):
    with pyvmm_machine(BUILD / "guest.elf", cmdline="none", cpus=2) as m:
        r = m.run(timeout=30)
    assert (r.status, r.exit_code) == ("exit", 3)
    assert "on 2 vCPU(s)" in r.text


@pytest.mark.kvm
def test_multiboot_kernel_gets_the_pc_platform(pyvmm_machine):
    m = pyvmm_machine(BUILD / "guest.flat", cmdline="none")
    assert m.pc is not None and m.mem_size == 128 << 20  # as QEMU's -kernel

"""``pyvmm`` as a user runs it: statuses, one-line errors, no tracebacks."""

from __future__ import annotations

import pytest
from cli import pyvmm

from pyvmm.errors import ExitStatus as status


def one_line_error(p):
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    return lines[0]


def test_hello(guests):
    p = pyvmm("run", str(guests / "hello.elf"))
    assert p.returncode == 0, p.stderr
    assert p.stdout == "Hello from a pyvmm guest: 1 vCPU(s), 64 MiB RAM\n"


def test_exit_status_and_append(guests):
    p = pyvmm("run", str(guests / "selftest.elf"), "--append", "exit 9")
    assert p.returncode == 9


def test_timeout_status(guests):
    p = pyvmm("run", str(guests / "selftest.elf"), "--append", "spin", "--timeout", "0.5")
    assert p.returncode == status.TIMEOUT
    assert "did not stop within 0.5 s" in one_line_error(p)


def test_triple_fault_status_and_report(guests):
    p = pyvmm("run", str(guests / "selftest.elf"), "--append", "triple")
    assert p.returncode == status.GUEST_CRASH
    assert "triple fault" in p.stderr and "<main" in p.stderr and "Traceback" not in p.stderr


def test_strict_io(guests):
    p = pyvmm("run", str(guests / "selftest.elf"), "--append", "unclaimed", "--strict-io")
    assert p.returncode == status.GUEST_IO
    assert "port 0x2f0" in one_line_error(p)


def test_stats_output(guests):
    p = pyvmm("run", str(guests / "hello.elf"), "--stats")
    assert p.returncode == 0
    assert "KVM_RUN calls" in p.stderr and "uart@0x3f8" in p.stderr
    assert "KVM stats that moved" in p.stderr and "vcpu0" in p.stderr


def test_smp_and_output_flushed(guests):
    p = pyvmm("run", str(guests / "selftest.elf"), "--append", "smp", "--cpus", "2")
    assert p.returncode == 0, p.stderr
    assert "1 of 1 APs started" in p.stdout


@pytest.mark.parametrize("content, message", [
    (b"not an elf", "not an ELF file"),
    (b"\x7fELF\x01\x01\x01" + bytes(60), "ELF32 image without a multiboot header"),
    (b"\x7fELF\x02", "truncated ELF identification"),
])
def test_bad_guest_files(tmp_path, content, message):
    f = tmp_path / "g.elf"
    f.write_bytes(content)
    p = pyvmm("run", str(f))
    assert p.returncode == status.GUEST_IMAGE
    assert message in one_line_error(p)


@pytest.mark.parametrize("flags", [["-static"], []], ids=["static", "dynamic"])
def test_a_linux_program_is_refused_not_run(tmp_path, flags):
    """``gcc -static hello.c`` was booted as a guest and spun silently for ever."""
    import shutil
    import subprocess

    if shutil.which("gcc") is None:
        pytest.skip("no gcc to build a Linux program with")
    (tmp_path / "hello.c").write_text('#include <stdio.h>\nint main(void) { puts("hi"); }\n')
    built = subprocess.run(["gcc", *flags, "-o", str(tmp_path / "hello"), str(tmp_path / "hello.c")],
                           capture_output=True)
    if built.returncode:
        pytest.skip(f"gcc {flags} cannot link here")
    p = pyvmm("run", str(tmp_path / "hello"), timeout=30)
    assert p.returncode == status.GUEST_IMAGE
    line = one_line_error(p)
    assert "a Linux user-space program" in line and "pyvmm guest build" in line


def test_guest_too_big_for_ram(guests):
    p = pyvmm("run", str(guests / "hello.elf"), "--mem", "1M")
    assert p.returncode == status.GUEST_IMAGE
    assert "outside guest RAM" in one_line_error(p)


@pytest.mark.parametrize("mem, has", [("512K", "512 KiB"), ("1M", "1 MiB")])
def test_multiboot_kernel_in_too_little_ram_says_so(guests, mem, has):
    """Under 1 MiB it was status 122 "guest range 0xe0000..0xe0210 is outside guest RAM"."""
    p = pyvmm("run", str(guests / "hello.flat"), "--mem", mem)
    assert p.returncode == status.GUEST_IMAGE, p.stderr
    line = one_line_error(p)
    assert f"the guest has {has} of RAM" in line and "needs at least" in line and "--mem" in line


def test_missing_kvm_device(guests):
    p = pyvmm("run", str(guests / "hello.elf"), env={"PYVMM_KVM_DEVICE": "/nonexistent/kvm"})
    assert p.returncode == status.KVM_UNAVAILABLE
    assert "no /nonexistent/kvm" in one_line_error(p)


def test_usage_errors():
    assert pyvmm("run").returncode == status.USAGE
    assert pyvmm("run", "x.elf", "--mem", "lots").returncode == status.USAGE


def test_info():
    p = pyvmm("info")
    assert p.returncode == 0
    assert "KVM API version: 12" in p.stdout and "SYNC_REGS" in p.stdout and "MMU:" in p.stdout


@pytest.mark.kvm
def test_guest_puts_is_c_puts(tmp_path):
    """The runtime's puts() added no newline, unlike C's."""
    src = tmp_path / "puts.c"
    src.write_text('#include <pyvmm/guest.h>\nint main(struct boot_info *bi, const char *c)\n'
                   '{\n\t(void)bi; (void)c;\n\tputs("one");\n\tputs("");\n\tprintf("two");\n'
                   '\tputs("three");\n\treturn 0;\n}\n')
    b = pyvmm("guest", "build", "-o", str(tmp_path / "puts.elf"), str(src), timeout=120)
    assert b.returncode == 0, b.stderr
    p = pyvmm("run", str(tmp_path / "puts.elf"))
    assert p.returncode == 0, p.stderr
    assert p.stdout == "one\n\ntwothree\n"

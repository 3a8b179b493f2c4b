"""Multiboot kernels run as under `qemu-system-x86_64 -kernel`: the same file, the same
output, the same verdict; and, where QEMU is installed, side by side with it."""

from __future__ import annotations

import re
import shutil
import subprocess

import cli
import pytest

from pyvmm import Machine, Space
from pyvmm.devices.base import HOST
from pyvmm.kvm.vm import PIC_MASTER

T = 30


@pytest.fixture(scope="module")
def env_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("env") / "env.txt"
    f.write_text("TESTNAME=multiboot\nX=1\n")
    return f


def pyvmm(*args):
    return cli.pyvmm("run", *args, timeout=120)


@pytest.mark.parametrize("mode", ["fwcfg", "env", "smp", "acpi", "testdev", "pci", "cmos"])
def test_mbtest_modes_pass(guests, env_file, mode):
    p = pyvmm(str(guests / "mbtest.flat"), "--append", mode, "--initrd", str(env_file),
              "--cpus", "2", "--timeout", str(T))
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"PASS: {mode}" in p.stdout and "SUMMARY: 1 tests" in p.stdout


def test_argv0_cmdline_module_and_default_memory(guests, env_file):
    path = str(guests / "mbtest.flat")
    p = pyvmm(path, "--append", "info a=b", "--initrd", str(env_file))
    assert p.returncode == 0, p.stderr
    size = len(env_file.read_bytes())
    assert (f'info: argv0 "{path} info a=b" cmdline "info a=b" ncpus 1 ram 128 MiB '
            f"module {size} bytes") in p.stdout  # QEMU's -m default: 128 MiB


def test_env_module_content(guests, env_file):
    p = pyvmm(str(guests / "mbtest.flat"), "--append", "env", "--initrd", str(env_file))
    assert "env: TESTNAME=multiboot\nenv: X=1\n" in p.stdout


def test_exit_codes_raw_and_qemu(guests):
    assert pyvmm(str(guests / "mbtest.flat"), "--append", "exit 3").returncode == 3
    assert pyvmm(str(guests / "mbtest.flat"), "--append", "exit 3",
                 "--exit-code", "qemu").returncode == 7  # (3 << 1) | 1


def test_bochs_shutdown_port(guests):
    p = pyvmm(str(guests / "mbtest.flat"), "--append", "shutdown")
    assert p.returncode == 0 and "FAIL" not in p.stdout


def test_pit_ticks_in_real_mode(guests):
    p = pyvmm(str(guests / "mb_rmpit.flat"), "--timeout", str(T))
    assert p.returncode == 10 and "PASS rm-pit" in p.stdout, p.stderr


def test_a_pit_tick_is_latched_in_the_pic_at_entry_as_a_bios_leaves_it(guests):
    """QEMU's SeaBIOS loads the kernel with interrupts off while the PIT ticks: IRQ 0 is
    pending in the master PIC at entry (issue 17); without a PIT nothing is."""
    with Machine.from_multiboot(guests / "mb_stiwin.flat") as m:
        pic = m.vm.pic_state(PIC_MASTER)
        assert pic["irr"] & 1 and not pic["isr"] & 1 and not pic["imr"] & 1, pic
        assert not pic["last_irr"] & 1  # the PIT's next tick is a new edge
        r = m.run(timeout=T)
    assert r.ok and "PASS: stiwin: PIT IRQ 0 latched" in r.text, r.text
    with Machine.from_multiboot(guests / "mb_stiwin.flat", pit=False) as m:
        assert not m.vm.pic_state(PIC_MASTER)["irr"] & 1


def test_testdev_as_the_host_sees_it(guests):
    with Machine.from_multiboot(guests / "mbtest.flat", cmdline="testdev") as m:
        r = m.run(timeout=T)
        assert r.ok, r.text
        assert m.pc.testdev.value == 0x5A  # the last (1-byte) scratch write
        assert m.pc.testdev_flush.flushes == 1
        assert m.bus.read(Space.MMIO, 0xFF000000, 4, HOST) == 0xCAFEF00D  # the bus: absolute
        assert m.pc.testdev_iomem.read(0, 4, HOST) == 0xCAFEF00D  # the device: offsets
    assert r.exit_counts["MMIO"] >= 4  # every iomem access exited


def test_multiboot_crash_is_reported(guests):
    p = pyvmm(str(guests / "selftest.flat"), "--append", "triple")
    assert p.returncode == 123 and "triple fault" in p.stderr and "<main" in p.stderr


def test_one_vcpu_init_sipi_broadcast_is_harmless(guests):
    p = pyvmm(str(guests / "mbtest.flat"), "--append", "smp")
    assert p.returncode == 0 and "0 of 0 APs up" in p.stdout


QEMU = shutil.which("qemu-system-x86_64")
# lines whose content does not depend on time or on QEMU's own fw_cfg extras
STABLE = ("PASS", "FAIL", "env:", "smp:", "pci:")
# modes whose lines name what the CPU model is (leaves, brand): only the same model on
# both sides gives the same lines
CPU_MODEL_MODES = {"cpuid-brand"}


def qemu_cmd(cpu, kernel, mode, env_file):
    return [QEMU, "-accel", "kvm", "-cpu", cpu, "-M", "pc", "-nodefaults", "-no-user-config",
            "-display", "none", "-serial", "stdio", "-m", "128", "-smp", "2",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-device", "pc-testdev",
            "-kernel", str(kernel), "-append", mode, "-initrd", str(env_file)]


@pytest.fixture(scope="module")
def qemu_cpu(guests, env_file):
    """The CPU model QEMU runs here, decided by running it: ``-cpu host`` (the model pyvmm
    gives its guests, which see the host's CPUID) where QEMU can, otherwise ``kvm64`` and
    why ``-cpu host`` could not (on kvm_pvm QEMU aborts setting MSRs the host refuses)."""
    p = subprocess.run(qemu_cmd("host", guests / "mb_low.flat", "hello", env_file),
                       capture_output=True, text=True, timeout=120)
    if p.returncode >= 0 and "PASS" in p.stdout:
        return "host", None
    why = next((line for line in p.stderr.splitlines() if line.strip()), f"status {p.returncode}")
    return "kvm64", f"QEMU -cpu host cannot run here ({why.strip()})"


def qemu_run(qemu_cpu, kernel, mode, env_file):
    return subprocess.run(qemu_cmd(qemu_cpu[0], kernel, mode, env_file), capture_output=True,
                          text=True, timeout=120)


def model_free(line):
    """A report line without the values the CPU model decides (hex numbers, quoted strings):
    what the check was and its verdict."""
    return re.sub(r'"[^"]*"|\b(0x)?[0-9a-fA-F]{4,}\b', "<cpu>", line)


# the -kernel contract gaps (issue #9): each kernel passes under pyvmm, and under QEMU too
CONTRACT = [("mb_low.flat", "hello"), ("mb_bios.flat", ""), ("mb_stiwin.flat", ""),
            ("mb_elf64.elf", ""),
            ("pcplat.flat", "ioapic-pit"), ("pcplat.flat", "poweroff"), ("pcplat.flat", "s3"),
            ("pcplat.flat", "hpet"), ("pcplat.flat", "cpuid-brand"), ("pcplat.flat", "rtc-uip")]


@pytest.mark.parametrize("kernel, mode", CONTRACT)
def test_pc_contract_kernels_pass(guests, kernel, mode):
    p = pyvmm(str(guests / kernel), "--append", mode, "--timeout", str(T))
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "FAIL" not in p.stdout and "Traceback" not in p.stderr
    if mode != "poweroff":  # ACPI S5 stops the machine before any summary
        assert "PASS" in p.stdout and "SUMMARY" in p.stdout


def test_poweroff_ends_the_run_with_status_0(guests):
    p = pyvmm(str(guests / "pcplat.flat"), "--append", "poweroff", "--timeout", str(T))
    assert p.returncode == 0 and "still running" not in p.stdout


def test_s3_resumes_at_the_waking_vector_with_ram_kept(guests):
    with Machine.from_file(guests / "pcplat.flat", cmdline="s3") as m:
        r = m.run(timeout=T)
        assert m.pc is not None and m.pc.acpi_pm.sts & 0x8000  # WAK_STS
    assert r.status == "exit" and r.exit_code == 0, r.text
    assert r.text.index("s3: suspending") < r.text.index("s3: resumed at the waking vector")
    assert "PASS: s3: RAM kept across S3" in r.text


def test_elf64_with_an_address_header_is_multiboot_unless_forced(guests):
    p = pyvmm(str(guests / "mb_elf64.elf"), "--format", "elf64")
    assert p.returncode == 1  # pyvmm's own ELF64 entry: the kernel says it was booted wrong


@pytest.mark.skipif(QEMU is None, reason="QEMU not installed (apt-get install qemu-system-x86)")
@pytest.mark.parametrize("kernel, mode", CONTRACT)
def test_contract_kernels_side_by_side_with_qemu(guests, env_file, qemu_cpu, kernel, mode):
    test_side_by_side_with_qemu(guests, env_file, qemu_cpu, kernel, mode)


@pytest.mark.skipif(QEMU is None, reason="QEMU not installed (apt-get install qemu-system-x86)")
# "pci" is left out by design: QEMU's pc machine always has its i440FX host bridge at
# 00:00.0, while pyvmm's configuration space has no device at all (the contract)
@pytest.mark.parametrize("kernel, mode", [("mbtest.flat", m) for m in
                                          ("fwcfg", "env", "smp", "acpi", "testdev", "cmos",
                                           "exit 5")] + [("mb_rmpit.flat", "")])
def test_side_by_side_with_qemu(guests, env_file, qemu_cpu, kernel, mode):
    def stable(out):
        lines = [line for line in out.splitlines() if line.startswith(STABLE)]
        if mode in CPU_MODEL_MODES and qemu_cpu[1]:  # not the same CPU model on both sides
            lines = [model_free(line) for line in lines]
        return lines

    p = pyvmm(str(guests / kernel), "--append", mode, "--initrd", str(env_file), "--cpus", "2",
              "--exit-code", "qemu", "--timeout", str(T))
    # pyvmm gets one run; QEMU, the reference, up to three: its timing-bound modes (an RTC
    # update seen in progress, the asynchronous S5 power-off) miss now and then on a loaded
    # host (seen in CI: rtc-uip FAIL under QEMU only).  A pyvmm result no QEMU run agrees
    # with still fails.
    for _ in range(3):
        q = qemu_run(qemu_cpu, guests / kernel, mode, env_file)
        if q.returncode == p.returncode and stable(q.stdout) == stable(p.stdout):
            break
    assert p.returncode == q.returncode, (p.stdout, q.stdout, q.stderr[-500:])
    assert stable(p.stdout) == stable(q.stdout), qemu_cpu[1]


def test_model_free_keeps_the_verdict_and_drops_the_model():
    a = model_free("PASS: cpuid-brand: extended leaves up to 80000021")
    assert a == model_free("PASS: cpuid-brand: extended leaves up to 80000008")
    assert a != model_free("FAIL: cpuid-brand: extended leaves up to 80000008")
    assert model_free('brand string "AMD EPYC"') == model_free('brand string "QEMU Virtual CPU"')

"""User mode (CPL3) in the guest SDK (issue 20): guests/usermode.c runs code through
GUEST_USER_CALL / GUEST_USER_TRY_CALL; what it reports is checked here, on ELF64 and
multiboot builds, one vCPU and two.  Nothing here assumes how the host delivers events to
user mode (kvm_pvm and VMX/SVM take different paths in the runtime): only the results."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from cli import pyvmm

from pyvmm import Machine
from pyvmm.errors import ExitStatus

T = 60
RO_VA = 0x40000000000  # guests/usermode.c: a user page mapped read-only
UNMAPPED_VA = 0x48000000000
PF_USER, PF_WRITE, PF_PRESENT = 4, 2, 1


def run(guests, cmdline, image="usermode.elf", **kw):
    with Machine.from_file(guests / image, cmdline=cmdline, **kw) as m:
        seen = []
        m.on_sync(lambda ev: seen.append((ev.vcpu, ev.args)))
        r = m.run(timeout=T)
    return r, seen


@pytest.mark.parametrize("image, mode", [("usermode.elf", "call"), ("usermode.flat", "call"),
                                         ("usermode.elf", "call sys")])
def test_user_call_returns_its_result_and_user_code_talks_to_the_host(guests, image, mode):
    """User code makes its own port I/O where the host applies the TSS I/O bitmap, else
    system calls; "call sys" takes the system calls on any host (guest_user_io = 0)."""
    r, seen = run(guests, mode, image)
    assert r.status == "done", r.message
    # add_one(41) at CPL3 gave 42 to CPL0 code (which reads CPL 0); talk(21) synced from
    # CPL3 (CPL 3) with the on_sync handler running as for any sync, and returned 42
    assert seen == [(0, (1, 42, 0)), (0, (2, 3, 21)), (0, (3, 42))]
    assert r.prints == ["user printf 21"]
    assert "user console 21\nuser puts\n" in r.text


@pytest.mark.parametrize("kind, vector, name", [("pf", 14, "#PF"), ("gp", 13, "#GP"),
                                                ("ud", 6, "#UD"), ("de", 0, "#DE"),
                                                ("wp", 14, "#PF")])
def test_a_fault_in_user_code_is_reported_as_at_cpl3(guests, kind, vector, name):
    r, _ = run(guests, f"fault {kind}")
    assert r.status == "assert"
    ev = r.assertion
    assert ev.kind == "exception" and ev.args[0] == vector
    assert ev.args[4] & 3 == 3  # the CS the exception pushed
    assert ev.symbol.startswith("do_fault"), ev.symbol
    assert f"unhandled guest exception {name} (vector {vector}," in r.message
    assert " at CPL3 RIP " in r.message, r.message


@pytest.mark.parametrize("image", ["usermode.elf", "usermode.flat"])
def test_interrupts_reach_their_handlers_during_a_user_call_and_if_comes_back(guests, image):
    """A user call made with IF set runs fn with IF set: LAPIC timer ticks reach their
    handler (through the IDT, from CPL3) while fn spins on the count; after the call IF is
    as the caller had it, set here (also when the call ended in a fault returned to a TRY
    call) and clear after a call made with it clear."""
    r, seen = run(guests, "irq", image)
    assert r.status == "done", r.message
    assert [args for _, args in seen] == [(70, 0), (71, 1, 1, 1, 1)]


def test_the_floor_probe_runs_and_puts_the_runtime_back(guests):
    """bench/usermode.py's floor loops swap gates and RSP0 in and out: each reports cycles,
    an OUT at CPL3 with IOPL 3 either works or raises #GP (13), and user calls after it work
    (the GUEST_DONE of "floor" comes after the runtime's state is back)."""
    r, seen = run(guests, "floor 20")
    assert r.status == "done", r.message
    got = {args[0]: args[1:] for _, args in seen}
    assert len(got[61]) == 5 and all(c > 0 for c in got[61])
    assert got[62][0] in (0, 13)
    assert got[64] == (2,)


def test_a_cpl0_fault_does_not_say_cpl3(guests):
    r, _ = run(guests, "ud", "protocol.elf")
    assert r.assertion.args[0] == 6 and "CPL3" not in r.message


def test_cli_reports_a_user_fault_with_status_126_on_one_line(guests):
    p = pyvmm("run", str(guests / "usermode.elf"), "--append", "fault pf", "--timeout", str(T))
    assert p.returncode == ExitStatus.GUEST_ASSERT
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "#PF" in lines[0] and "at CPL3 RIP" in lines[0], p.stderr
    assert f"CR2 {UNMAPPED_VA:#x}" in lines[0] and "<do_fault" in lines[0]
    assert "Traceback" not in p.stderr


def test_try_call_returns_each_fault_and_user_mode_goes_on(guests):
    r, seen = run(guests, "try")
    assert r.status == "done", r.message
    got = {args[0]: args[1:] for _, args in seen}
    # (result, faulted, vector, error code, CR2)
    assert got[10][:4] == (2**64 - 1, 1, 14, PF_USER)  # not present, read, from user mode
    assert got[10][4] == UNMAPPED_VA
    assert got[11][:4] == (2**64 - 1, 1, 13, 0)
    assert got[12][:3] == (2**64 - 1, 1, 6)
    assert got[13][:3] == (2**64 - 1, 1, 0)
    assert got[14] == (2**64 - 1, 1, 14, PF_USER | PF_WRITE | PF_PRESENT, RO_VA + 8)
    assert got[20] == (8, 0)  # a call after the faults: add_one(7), no fault


def test_assert_exit_and_done_from_user_code(guests):
    r, _ = run(guests, "assert")
    assert r.status == "assert" and r.assertion.kind == "assert"
    assert r.assertion.expr == "x == 5" and r.assertion.args == (4, 5)
    assert r.assertion.file.endswith("usermode.c")
    r, _ = run(guests, "exit 7")
    assert r.status == "exit" and r.exit_code == 7, r.message
    r, _ = run(guests, "done")
    assert r.status == "done", r.message


def _xorshift_squares(seed: int, n: int = 4096) -> int:
    x, s = seed, 0
    for _ in range(n):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        s = (s + x * x) & 0xFFFFFFFF
    return s


@pytest.mark.parametrize("image", ["usermode.elf", "usermode.flat"])
def test_vector_code_at_cpl3_gives_the_hosts_answer(guests, image):
    seed = 0x2545F491
    r, seen = run(guests, f"vec {seed}", image)
    assert r.status == "done", r.message
    [(_, (stage, sse2, has_avx2, avx2, dbl))] = seen
    want = _xorshift_squares(seed)
    assert stage == 30 and sse2 == want
    # AVX2 where the guest's CPUID has it (and the runtime enabled its XCR0 state)
    assert avx2 == (want if has_avx2 else 2**64 - 1)
    assert dbl == sum(range(1000))  # doubles: cvtsi2sd/addsd, which CPL0 code cannot use


@pytest.mark.parametrize("image", ["usermode.elf", "usermode.flat"])
def test_aps_make_user_calls_too(guests, image):
    r, seen = run(guests, "smp", image, cpus=2)
    assert r.status == "done", r.message
    assert sorted(seen) == [(0, (50, 100, 1)), (1, (51, 101, 0))]


def test_user_sources_get_the_vector_isa_and_cpl0_sources_do_not(tmp_path):
    src = tmp_path / "half.c"
    src.write_text("double half(double x) { return x / 2; }\n")
    main = tmp_path / "main.c"
    main.write_text("#include <pyvmm/guest.h>\n"
                    "int main(struct boot_info *bi, const char *c) { return 0; }\n")
    out = tmp_path / "g.elf"
    p = pyvmm("guest", "build", "-o", str(out), str(main), str(src), timeout=120)
    assert p.returncode == ExitStatus.GUEST_BUILD and "SSE" in p.stderr  # CPL0: no vectors
    p = pyvmm("guest", "build", "-o", str(out), str(main), "--user-src", str(src), timeout=120)
    assert p.returncode == 0, p.stderr
    p = pyvmm("guest", "build", "-o", str(out), str(main), "--user-src", str(src),
              "--user-isa", "-O0", timeout=120)
    assert p.returncode == ExitStatus.GUEST_BUILD
    assert "--user-isa '-O0': not an ISA name" in p.stderr


def test_guest_flags_offer_the_user_side():
    p = pyvmm("guest", "flags", "--user-cflags")
    assert p.returncode == 0
    flags = p.stdout.split()
    assert "-march=native" in flags and "-mgeneral-regs-only" not in flags
    assert "-mno-red-zone" in flags  # user system calls push on the user stack
    p = pyvmm("guest", "flags", "--user-cflags", "--user-isa", "x86-64-v3")
    assert "-march=x86-64-v3" in p.stdout.split()
    cpl0 = pyvmm("guest", "flags", "--cflags").stdout.split()
    assert "-mgeneral-regs-only" in cpl0


QEMU = shutil.which("qemu-system-x86_64")


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
@pytest.mark.parametrize("mode, status, out", [("call", 0, "user console 21\nuser puts\n"),
                                               ("exit 5", 5, ""), ("try", 0, ""),
                                               ("vec 5", 0, ""), ("smp", 0, "")])
def test_the_syscall_path_under_qemu_tcg(guests, mode, status, out):
    """QEMU's TCG does SYSCALL as hardware does (CPL0 at LSTAR), the path VMX/SVM hosts take
    and kvm_pvm does not: the same guest must work there too.  isa-debug-exit makes the
    status (v << 1) | 1; GUEST_SYNC/DONE go to a port QEMU ignores, then exit(0)."""
    assert QEMU is not None
    p = subprocess.run([QEMU, "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "128",
                        "-kernel", str(guests / "usermode.flat"), "-append", mode,
                        "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-display", "none",
                        "-serial", "stdio", "-no-reboot"], capture_output=True, text=True,
                       timeout=T)
    assert p.returncode == (status << 1) | 1, (p.stdout, p.stderr)
    assert out in p.stdout


def test_a_snapshot_taken_in_a_user_call_goes_on_in_a_clone(guests):
    """Stopped at a GUEST_SYNC made from CPL3 (the vCPU is inside the runtime's system
    call), the snapshot holds the user call's state (GDT/TSS, GS base, SYSCALL MSRs, the
    kernel stack to return to): a new machine from it finishes the call."""
    with Machine.from_file(guests / "usermode.elf", cmdline="call") as m:
        r = m.run_to_sync(2, T)
        assert r.status == "stopped" and r.syncs(2)[0].args == (2, 3, 21), r.message
        snap = m.snapshot()
    with Machine.from_snapshot(snap) as clone:
        seen = []
        clone.on_sync(lambda ev: seen.append(ev.args))
        r = clone.run(timeout=T)
    assert r.status == "done", r.message
    assert seen == [(3, 42)] and r.prints == ["user printf 21"]

#!/usr/bin/env python3
"""pyvmm benchmarks: every figure is a ratio against a reference measured in the same run.

1. PIO exit cost: pyvmm's C loop, pyvmm's Python loop and the raw C reference VMM
   (bench/raw_vmm.c), interleaved round by round, on the same guest bytes.
2. In-process create -> first exit -> destroy: pyvmm's Machine against raw C.
3. Whole-process ``pyvmm run hello``: wall time and peak RSS, against the raw C VMM
   process (the floor for any VMM) and QEMU ``-M microvm`` where it is installed.

Run with ``make bench``.  Medians over the rounds; the spread is printed too, because this
host's timings vary by about 2x from run to run (HOST-KVM.md).
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from installed import PYVMM  # first: refuses the source tree

from pyvmm import Machine
from pyvmm.loader import ElfImage, open_image

HERE = Path(__file__).resolve().parent
B = HERE / "build"
ELF = B / "pio_loop.elf"
BIN = B / "pio_loop.bin"
RAW = B / "raw_vmm"
HELLO = HERE.parent / "guests" / "build" / "hello.elf"
#: the same program as a multiboot .flat: QEMU's -kernel takes multiboot before PVH and
#: refuses an ELF64 multiboot image, so QEMU boots this build of hello
HELLO_FLAT = HERE.parent / "guests" / "build" / "hello.flat"
EXITS = int(os.environ.get("BENCH_EXITS", "20000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))


@functools.cache
def bench_image() -> ElfImage:
    image = open_image(ELF)
    assert isinstance(image, ElfImage)
    return image


def raw(mode: str, n: int, irqchip: str = "kernel", setup: str = "min", warmup: int = 0) -> float:
    """The raw C VMM; ``setup="full"`` also does the CPUID/MSR/FPU/LAPIC set-up a VMM
    does (pyvmm's x86/reset.py: the same, less KVM_SET_FPU and KVM_GET_LAPIC, which KVM's
    own reset makes needless), so that ratio compares like with like; ``warmup``
    lifecycles run untimed first (pyvmm's side is measured warm too)."""
    img = bench_image()
    count = img.symbols.address_of("bench_count")
    out = subprocess.run([str(RAW), mode, str(BIN), "0x100000", hex(img.entry), hex(count), str(n)],
                         check=True, capture_output=True, text=True,
                         env=dict(os.environ, RAW_IRQCHIP=irqchip, RAW_SETUP=setup,
                                  RAW_WARMUP=str(warmup))).stdout.split()
    return float(out[1])


def pyvmm_exits(python_loop: bool) -> float:
    with Machine.from_elf(ELF, mem="64M") as m:
        assert m.image is not None
        m.memory.write_int(m.image.symbols.address_of("bench_count"), 8, EXITS)
        loop = m.vcpu_loop(0)
        t0 = time.perf_counter_ns()
        out = loop.run_python() if python_loop else loop.run()
        dt = time.perf_counter_ns() - t0
        assert out.kind == "exit" and out.code == 0, out
        exits = loop.kvm_runs
        assert exits == EXITS + 1, exits
    return dt / exits


def pyvmm_lifecycle(image: ElfImage, irqchip: str) -> float:
    """One Machine from an already-parsed image (as a fuzzer or test harness reuses it)."""
    t0 = time.perf_counter_ns()
    with Machine(mem="64M", irqchip=irqchip) as m:
        m.load(m.plan_for(image), image)
        m.memory.write_int(image.symbols.address_of("bench_count"), 8, 0)
        out = m.vcpu_loop(0).run()
    dt = time.perf_counter_ns() - t0
    assert out.kind == "exit"
    return dt


def process(cmd: list[str], expect: int = 0) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child process, measured by bench/measure.c."""
    out = subprocess.run([str(B / "measure"), *cmd], check=True, capture_output=True,
                         text=True).stdout.split()
    if int(out[2]) != expect:
        raise RuntimeError(f"{cmd[0]} exited with {out[2]}, expected {expect}")
    return int(out[0]) / 1e9, int(out[1])


def qemu_command(qemu: str) -> list[str] | None:
    """QEMU microvm booting hello.flat (multiboot), with the first CPU model this KVM
    accepts (kvm_pvm refuses -cpu host's ARCH_CAPABILITIES MSR)."""
    base = [qemu, "-M", "microvm,x-option-roms=off,rtc=off", "-accel", "kvm", "-m", "64M",
            "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", str(HELLO_FLAT)]
    for cpu in ("host", "kvm64", "qemu64"):
        cmd = [*base, "-cpu", cpu]
        p = subprocess.run(cmd, capture_output=True, timeout=60)
        if p.returncode == 1 and b"Hello from a pyvmm guest" in p.stdout:  # (0 << 1) | 1
            return cmd
    return None


VMEXIT = HERE.parent / "guests" / "build" / "vmexit.flat"
USERSPACE_ROWS = ("inl_unassigned", "outl_unassigned", "mmio_write", "inl_pmtimer")


def parse_vmexit(out: str) -> dict[str, float]:
    rows = dict(line.split()[1:3] for line in out.splitlines() if line.startswith("vmexit: "))
    return {k: float(v) for k, v in rows.items()}


def vmexit_rows(results: dict[str, object], qemu_microvm: list[str] | None) -> None:
    """4. The in-guest exit microbenchmark (guests/vmexit.c), the same .flat under pyvmm and
    QEMU's pc machine, interleaved; cycles per operation minus the empty-loop baseline."""
    qemu = shutil.which("qemu-system-x86_64")
    ours_cmd = [*PYVMM, "run", str(VMEXIT), "--cpus", "2", "--timeout", "120"]
    theirs_cmd = None
    if qemu and qemu_microvm:
        cpu = qemu_microvm[qemu_microvm.index("-cpu") + 1]
        theirs_cmd = [qemu, "-accel", "kvm", "-cpu", cpu, "-M", "pc", "-nodefaults",
                      "-no-user-config", "-display", "none", "-serial", "stdio", "-m", "128",
                      "-smp", "2", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
                      "-kernel", str(VMEXIT)]
    ours: list[dict[str, float]] = []
    theirs: list[dict[str, float]] = []
    for _ in range(5):
        ours.append(parse_vmexit(subprocess.run(ours_cmd, capture_output=True, text=True,
                                                timeout=300).stdout))
        if theirs_cmd:
            theirs.append(parse_vmexit(subprocess.run(theirs_cmd, capture_output=True,
                                                      text=True, timeout=300).stdout))
    print("\n4. in-guest exit costs, guests/vmexit.c (TSC cycles per operation minus the "
          "empty loop; median of 5 interleaved runs)")
    names = [n for n in ours[0] if n != "loop"]
    out: dict[str, dict[str, float]] = {}
    for name in names:
        o = med([r[name] - r["loop"] for r in ours])
        line = f"   {name:<16} pyvmm {o:9.0f}"
        out[name] = {"pyvmm": o}
        if theirs:
            t = med([r[name] - r["loop"] for r in theirs])
            ratio = o / t if t > 0 else float("nan")
            target = ("  (target <= 1.00)" if name in USERSPACE_ROWS
                      else "  (no target: answered inside KVM, not by pyvmm)")
            line += f"   QEMU {t:9.0f}   ratio {ratio:.3f}{target}"
            out[name].update(qemu=t, ratio=ratio)
        print(line)
    if not theirs:
        print("   (QEMU not installed: pyvmm's figures only)")
    results["vmexit_cycles"] = out


#: what ``pyvmm run GUEST`` imports: the entry, the click-free reader and the run itself
#: (pyvmm.cli and click only load for other command lines)
RUN_PATH = ("pyvmm.entry", "pyvmm.runargs", "pyvmm.runcmd")


def imports_row(results: dict[str, object]) -> None:
    """The import cost of ``pyvmm run``'s modules, as ``python -X importtime`` reports it
    (the cumulative microseconds of :data:`RUN_PATH`, median of 5), beside the bare
    interpreter's start, and the five largest pyvmm modules by their own time."""
    cum, selfs = [], []
    for _ in range(5):
        # -P: the working directory stays off sys.path, so a run from the repository root
        # measures the installed package, not the source tree (which has no _native)
        err = subprocess.run([sys.executable, "-P", "-X", "importtime", "-c",
                              "import " + ", ".join(RUN_PATH)],
                             capture_output=True, text=True, check=True).stderr
        rows = [line.split("|") for line in err.splitlines() if line.startswith("import time:")]
        own = {r[2].strip(): int(r[0].split(":")[1]) for r in rows if r[0].split(":")[1].strip().isdigit()}
        cum.append(sum(int(r[1]) for r in rows if r[2].strip() in RUN_PATH) / 1000)
        selfs.append(own)
    bare = med([process([sys.executable, "-P", "-c", "pass"])[0] * 1000 for _ in range(5)])
    top = sorted(((k, med([s.get(k, 0) / 1000 for s in selfs])) for k in selfs[0]
                  if k.startswith("pyvmm")), key=lambda kv: -kv[1])[:5]
    print(f"   import (run path)      {med(cum):7.1f} ms (-X importtime, cumulative)   bare "
          f"interpreter {bare:.1f} ms   largest: "
          + ", ".join(f"{k.removeprefix('pyvmm.')} {v:.1f}" for k, v in top)
          + "   (no target: where row 3's time goes; tests/integration/test_import_set.py "
          "guards the set)")
    results["imports"] = {"run_path_ms": med(cum), "bare_interpreter_ms": bare}


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> str:
    return f"[{min(xs):.2f}-{max(xs):.2f}]"


def main() -> int:
    for f in (ELF, BIN, RAW, HELLO, HELLO_FLAT, VMEXIT):
        if not f.exists():
            print(f"missing {f}: run `make bench` (it builds everything first)", file=sys.stderr)
            return 2
    results: dict[str, object] = {}
    print(f"pyvmm bench: {EXITS} PIO exits per measurement, {ROUNDS} interleaved rounds")

    # 1. exit cost, interleaved
    c_ref, c_loop, py_loop = [], [], []
    pyvmm_exits(False)  # warm-up: imports, first-VM costs
    for _ in range(ROUNDS):
        c_ref.append(raw("exits", EXITS) / 1000)
        c_loop.append(pyvmm_exits(False) / 1000)
        py_loop.append(pyvmm_exits(True) / 1000)
    r_c = [a / b for a, b in zip(c_loop, c_ref, strict=True)]
    r_py = [a / b for a, b in zip(py_loop, c_ref, strict=True)]
    print("\n1. PIO exit round trip (us per exit, median [min-max])")
    print(f"   raw C reference      {med(c_ref):7.2f} us {spread(c_ref)}   (the reference)")
    print(f"   pyvmm C loop         {med(c_loop):7.2f} us {spread(c_loop)}   ratio {med(r_c):.3f}x "
          f"{spread(r_c)}  (target <= 1.03x)")
    print(f"   pyvmm Python loop    {med(py_loop):7.2f} us {spread(py_loop)}   ratio {med(r_py):.3f}x "
          f"{spread(r_py)}  (target <= 1.25x)")
    results["exit_us"] = {"raw_c": c_ref, "c_loop": c_loop, "python_loop": py_loop,
                          "ratio_c_loop": med(r_c), "ratio_python_loop": med(r_py)}

    # 2. create -> first exit -> destroy, in-process, per interrupt-controller set-up
    # short bursts, many rounds, and the ratio taken per round: this host's speed drifts
    # over seconds (raw C's cycle between ~0.63 and ~1.1 ms), and a round is one phase
    rounds, n = 10, 6
    image = bench_image()
    print("\n2. create VM + vCPU + 64 MiB -> first exit -> destroy, in-process (ms, median; "
          "ratios: median of the rounds' [min-max])")
    results["lifecycle_ms"] = {}
    print("   (raw C min: the minimum to run; raw C full: plus the CPUID/MSR/FPU/LAPIC set-up "
          "a VMM does; both warmed up, as pyvmm is)")
    for irqchip in ("kernel", "split", "none"):
        pyvmm_lifecycle(image, irqchip)
        ref_ms, full_ms, ours_ms, r_min, r_full = [], [], [], [], []
        for _ in range(rounds):  # interleaved; each burst starts with an untimed cycle
            ref_ms.append(raw("lifecycle", n, irqchip, warmup=1) / 1e6)
            full_ms.append(raw("lifecycle", n, irqchip, setup="full", warmup=1) / 1e6)
            pyvmm_lifecycle(image, irqchip)
            burst = [pyvmm_lifecycle(image, irqchip) / 1e6 for _ in range(n)]
            ours_ms += burst
            r_min.append(med(burst) / ref_ms[-1])
            r_full.append(med(burst) / full_ms[-1])
        print(f"   irqchip={irqchip:<6}  raw C min {med(ref_ms):6.3f} ms  full {med(full_ms):6.3f} ms   "
              f"pyvmm {med(ours_ms):6.3f} ms   ratio {med(r_min):.2f}x {spread(r_min)} min, "
              f"{med(r_full):.2f}x full  (target <= 1.5x)")
        results["lifecycle_ms"][irqchip] = {"raw_c": med(ref_ms), "raw_c_full": med(full_ms),
                                            "pyvmm": med(ours_ms), "ratio": med(r_min),
                                            "ratio_full": med(r_full)}

    # 3. whole process
    pyvmm_cmd = [*PYVMM, "run", str(HELLO)]
    img = bench_image()
    raw_cmd = [str(RAW), "lifecycle", str(BIN), "0x100000", hex(img.entry),
               hex(img.symbols.address_of("bench_count")), "1"]
    qemu = shutil.which("qemu-system-x86_64")
    qcmd = qemu_command(qemu) if qemu else None
    ours, ref, theirs = [], [], []
    for _ in range(10):  # interleaved
        ours.append(process(pyvmm_cmd))
        ref.append(process(raw_cmd))
        if qcmd:
            theirs.append(process(qcmd, expect=1))
    t_ours, t_ref = med([t for t, _ in ours]) * 1000, med([t for t, _ in ref]) * 1000
    m_ours, m_ref = med([m for _, m in ours]) / 1024, med([m for _, m in ref]) / 1024
    print("\n3. whole process, `pyvmm run hello` (median of 10, interleaved)")
    print(f"   raw C VMM process    {t_ref:7.1f} ms   peak RSS {m_ref:6.1f} MiB   (the floor: no target)")
    print(f"   pyvmm run hello      {t_ours:7.1f} ms   peak RSS {m_ours:6.1f} MiB   "
          + ("(target: the ratio to QEMU below)" if qcmd else "(target: <= QEMU microvm's time)"))
    results["process"] = {"pyvmm_ms": t_ours, "pyvmm_rss_mib": m_ours, "raw_c_ms": t_ref,
                          "raw_c_rss_mib": m_ref}
    if qcmd:
        t_q, m_q = med([t for t, _ in theirs]) * 1000, med([m for _, m in theirs]) / 1024
        print(f"   QEMU microvm hello   {t_q:7.1f} ms   peak RSS {m_q:6.1f} MiB   "
              f"(the reference; -cpu {qcmd[-1]}, hello.flat)")
        print(f"   pyvmm / QEMU         {t_ours / t_q:.2f}x time, {m_ours / m_q:.2f}x RSS  "
              "(target <= 1.00x time, then 0.50x; <= 0.50x RSS)")
        results["process"].update(qemu_ms=t_q, qemu_rss_mib=m_q, ratio_time=t_ours / t_q,
                                  ratio_rss=m_ours / m_q)
    elif qemu:
        print("   QEMU microvm         installed, but did not boot hello with any CPU model")
    else:
        print("   QEMU microvm         not installed (apt-get install qemu-system-x86 to compare)")
    imports_row(results)
    vmexit_rows(results, qcmd)
    (B / "results.json").write_text(json.dumps(results, indent=1))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"\nself: peak RSS of this bench process {rss} MiB; raw numbers in {B / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

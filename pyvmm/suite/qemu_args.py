"""QEMU command-line options, as test configs write them, mapped to pyvmm's settings.

Nothing is silently dropped: every option is either mapped (``-smp``, ``-m``, ``-append``,
``-initrd``, ``-cpu``, ``-machine`` properties pyvmm has), known to be harmless here
(display, serial and reboot options of a headless ``-kernel`` run: a note), or reported as
unsupported with the reason ("needs QEMU -device intel-iommu"), which makes the test a
SKIP unless the user asks to run it anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: options that change nothing for a headless -kernel run under pyvmm (with their argument)
HARMLESS_WITH_ARG = {"-display", "-vnc", "-serial", "-monitor", "-name", "-boot", "-vga"}
HARMLESS = {"-nodefaults", "-no-reboot", "--no-reboot", "-nographic", "-no-user-config",
            "-enable-kvm", "-s", "-S"}
#: devices pyvmm's PC always has, with the settings kvm-unit-tests use
BUILTIN_DEVICES = {"pc-testdev", "isa-debug-exit", "testdev"}
MACHINES = {"pc", "pc-i440fx", "isapc"}
MAX_CPUS = 64


@dataclass
class QemuSettings:
    """What a QEMU command line asks of the machine."""

    cpus: int | None = None
    mem: str | None = None
    append: str | None = None
    initrd: str | None = None
    cpu_model: str | None = None
    cpu_features: list[str] = field(default_factory=list)
    irqchip: str | None = None
    pit: bool | None = None
    unsupported: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _props(value: str) -> tuple[str | None, dict[str, str]]:
    """``"q35,pit=off,accel=kvm"`` -> ``("q35", {"pit": "off", "accel": "kvm"})``."""
    first: str | None = None
    props: dict[str, str] = {}
    for i, part in enumerate(value.split(",")):
        if "=" in part:
            k, v = part.split("=", 1)
            props[k.replace("_", "-")] = v
        elif i == 0:
            first = part
        elif part:
            props[part] = "on"
    return first, props


def parse(argv: list[str]) -> QemuSettings:
    s = QemuSettings()
    i = 0

    def arg() -> str:
        nonlocal i
        i += 1
        if i >= len(argv):
            s.unsupported.append(f"{argv[i - 1]} without its argument")
            return ""
        return argv[i]

    while i < len(argv):
        opt = argv[i]
        if opt.startswith("--") and opt not in HARMLESS:
            opt = opt[1:]  # QEMU takes --opt as -opt
        if opt == "-smp":
            _smp(s, arg())
        elif opt == "-m":
            first, props = _props(arg())
            size = props.get("size", first)
            s.mem = size
            if set(props) - {"size"}:
                s.unsupported.append(f"-m {argv[i]} (memory hotplug)")
        elif opt == "-append":
            s.append = arg()
        elif opt == "-initrd":
            s.initrd = arg()
        elif opt == "-cpu":
            _cpu(s, arg())
        elif opt in ("-machine", "-M"):
            _machine(s, arg())
        elif opt == "-accel":
            name, _ = _props(arg())
            if name != "kvm":
                s.unsupported.append(f"needs QEMU -accel {name} (pyvmm runs on KVM)")
        elif opt == "-device":
            driver, _ = _props(arg())
            if driver not in BUILTIN_DEVICES:
                s.unsupported.append(f"needs QEMU -device {driver}")
        elif opt in HARMLESS_WITH_ARG:
            s.notes.append(f"{opt} {arg()} ignored (headless run)")
        elif opt in HARMLESS:
            pass
        elif opt.startswith("-"):
            s.unsupported.append(f"needs QEMU option {opt}")
            if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                i += 1  # its argument
        else:
            s.unsupported.append(f"stray argument {opt!r}")
        i += 1
    return s


def _smp(s: QemuSettings, value: str) -> None:
    first, props = _props(value)
    count = props.pop("cpus", first)
    if count is None or not count.isdigit() or not 1 <= int(count) <= MAX_CPUS:
        s.unsupported.append(f"needs QEMU -smp {value} (pyvmm runs 1-{MAX_CPUS} vCPUs)")
        return
    s.cpus = int(count)
    maxcpus = props.pop("maxcpus", None)
    if maxcpus is not None:
        s.notes.append(f"-smp maxcpus={maxcpus} ignored (no CPU hotplug; {count} vCPUs)")
    for name, v in props.items():
        # one socket of `cpus` cores is what pyvmm gives; a topology that says the same is fine
        if not (name in ("sockets", "cores", "threads", "dies") and v.isdigit()):
            s.unsupported.append(f"needs QEMU -smp {name}={v}")
        elif name != "cores" and v != "1":
            s.unsupported.append(f"needs QEMU -smp {name}={v} (pyvmm gives one socket)")


#: -cpu properties that ask for what pyvmm gives anyway
CPU_SAME = {"host-phys-bits": "on", "migratable": "no", "check": "on", "enforce": "on",
            "kvm": "on", "l3-cache": "on"}


def _cpu(s: QemuSettings, value: str) -> None:
    model, props = _props(value)
    s.cpu_model = model
    if model not in (None, "host", "max"):
        s.notes.append(f"-cpu {model}: pyvmm gives KVM's supported CPUID with the host's "
                       "brand, as -cpu host; only the +/- flags are applied")
    for name, v in props.items():
        if name.startswith(("+", "-")):
            s.cpu_features.append(name)
        elif CPU_SAME.get(name) == v or (name == "migratable" and v == "off"):
            s.notes.append(f"-cpu {name}={v}: as pyvmm always does")
        elif name == "vendor":
            from pyvmm.x86.cpuid import host_vendor

            if v != host_vendor():
                s.unsupported.append(f"needs QEMU -cpu vendor={v} (this host is {host_vendor()})")
        elif v in ("on", "off") and not name.startswith("hv"):
            s.cpu_features.append(("+" if v == "on" else "-") + name)
        else:
            s.unsupported.append(f"needs QEMU -cpu property {name}={v}")


def _machine(s: QemuSettings, value: str) -> None:
    kind, props = _props(value)
    if kind is not None and not any(kind == m or kind.startswith(m + "-") for m in MACHINES):
        s.unsupported.append(f"needs QEMU -machine {kind}")
    for name, v in props.items():
        if name == "type":
            _machine(s, v)
        elif name == "accel":
            if v != "kvm":
                s.unsupported.append(f"needs QEMU -machine accel={v} (pyvmm runs on KVM)")
        elif name == "pit":
            s.pit = v not in ("off", "false", "no")
        elif name == "kernel-irqchip":
            s.irqchip = {"on": "kernel", "split": "split", "off": "none"}.get(v)
            if s.irqchip is None:
                s.unsupported.append(f"needs QEMU -machine kernel-irqchip={v}")
        elif name in ("smm", "vmport", "hpet") and v == "off":
            s.notes.append(f"-machine {name}=off ignored")
        else:
            s.unsupported.append(f"needs QEMU -machine {name}={v}")

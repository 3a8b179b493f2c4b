"""kvm-unit-tests' ``unittests.cfg``, read as its ``scripts/common.bash`` reads it, and its
verdicts given as ``scripts/runtime.bash`` and ``scripts/arch-run.bash`` give them.

The format: ``[name]`` starts a test; lines ``key = value`` follow (``file``, ``smp``,
``extra_params`` or ``qemu_params`` (a ``\"\"\"`` block may span lines), ``test_args``,
``groups``, ``arch``, ``machine``, ``check``, ``accel``, ``timeout``, ``disabled_if``);
anything else (comments) is ignored.  Values are taken as bash would expand them in the
runner's ``eval``: ``$MAX_SMP``, ``$((...))`` and backticks work, because bash expands them.

Verdicts: the kernel's debug-exit value ``v`` becomes QEMU's status ``(v << 1) | 1``; 1
means PASS, 77 SKIP, anything else FAIL; a run that ends without debug-exit (QEMU exits
0) is a FAIL, as are timeouts (124) and crashes.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from pyvmm.suite import qemu_args
from pyvmm.suite.files import FileRefused, read_check, read_config
from pyvmm.suite.model import DEFAULT_TIMEOUT, KUT, SuiteTest, check_timeout

ARCH = "x86_64"
_SECTION = re.compile(r"^\[(.*)\]$")
_KEY = re.compile(r"^(file|smp|extra_params|qemu_params|test_args|groups|arch|machine|check|"
                  r"accel|timeout|disabled_if) *= *(.*)$")
_TRIPLE = '"""'
#: text in which bash's eval finds nothing to expand, quote, glob or redirect
_PLAIN = re.compile(r"[^$`'\"\\*?\[\]{}~<>;&|()#!]*")


def bash_env() -> dict[str, str]:
    """The variables a kvm-unit-tests config may use, as its runner sets them."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env.update(ARCH=ARCH, ARCH_NAME=ARCH, TARGET="qemu", ACCEL="kvm", HOST=platform.machine(),
               MAX_SMP=str(os.cpu_count() or 1), TIMEOUT=f"{DEFAULT_TIMEOUT:g}s")
    return env


def expand(words: str, cwd: Path) -> list[str]:
    """``words`` split and expanded as bash's ``eval`` would (quotes, ``$VAR``, ``$((..))``,
    backticks); shlex's split where there is no bash.  Words with nothing bash would expand
    or quote are split here: most values (``2``, ``-append cpuid``) cost no bash process."""
    if not words.strip():
        return []
    if _PLAIN.fullmatch(words):
        return words.split()
    if shutil.which("bash") is None:
        return shlex.split(words)
    p = subprocess.run(["bash", "-c", 'eval "set -- $1" && printf "%s\\0" "$@"', "_", words],
                       capture_output=True, env=bash_env(), cwd=cwd, timeout=10)
    if p.returncode != 0:
        raise ValueError(f"bash could not expand {words!r}: {p.stderr.decode().strip()}")
    return [w.decode() for w in p.stdout.split(b"\0")[:-1]]


def bash_true(condition: str, cwd: Path) -> bool:
    """``disabled_if``: the runner runs ``(eval $cond)`` and skips when it succeeds."""
    if shutil.which("bash") is None:
        return False
    p = subprocess.run(["bash", "-c", f"eval {shlex.quote(condition)}"], capture_output=True,
                       env=bash_env(), cwd=cwd, timeout=10)
    return p.returncode == 0


def parse_timeout(text: str) -> float:
    """timeout(1)'s durations: ``90``, ``90s``, ``5m``, ``1h``, ``1d``; ValueError for
    anything else, and for one that is 0 (timeout(1): no limit) or longer than a week."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([smhd]?)\s*", text)
    if m is None:
        raise ValueError(f"not a timeout: {text!r}")
    return check_timeout(float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)])


def read_entries(text: str) -> list[tuple[str, dict[str, str], int]]:
    """``[(name, {key: raw value}, line)]`` in file order, as ``for_each_unittest`` reads
    them; ``line`` is the 0-based line of the ``[name]``."""
    entries: list[tuple[str, dict[str, str], int]] = []
    lines = iter(enumerate(text.splitlines()))
    for number, raw in lines:
        line = raw.strip()  # `read -r` drops leading and trailing blanks
        m = _SECTION.match(line)
        if m:
            entries.append((m.group(1), {}, number))
            continue
        m = _KEY.match(line)
        if m is None or not entries:
            continue
        key, value = m.group(1), m.group(2)
        if key in ("extra_params", "qemu_params") and value.startswith(_TRIPLE):
            block = [value[len(_TRIPLE):]]
            for _, more in lines:
                end = more.rstrip().endswith(_TRIPLE)
                block.append(more.rstrip()[:-len(_TRIPLE)] if end else more)
                if end:
                    break
            value = " ".join(part.rstrip("\\") for part in block)
        entries[-1][1]["params" if key in ("extra_params", "qemu_params") else key] = value
    return entries


def parse(path: Path, *, run_all: bool = False, groups_selected: bool = False) -> list[SuiteTest]:
    """The tests of a ``unittests.cfg``; kernels are found beside it (``file = x.flat``)."""
    base = path.parent
    tests = []
    for name, fields, line in read_entries(read_config(path)):
        t = SuiteTest(name, base / fields.get("file", ""), path, style=KUT, line=line)
        try:
            _fill(t, fields, base, run_all=run_all, groups_selected=groups_selected)
        except (ValueError, subprocess.SubprocessError) as e:  # FileRefused is a ValueError
            t.error = f"cannot read its entry in {path.name}: {e}"
        tests.append(t)
    return tests


def _fill(t: SuiteTest, fields: dict[str, str], base: Path, *, run_all: bool,
          groups_selected: bool) -> None:
    t.groups = tuple(fields.get("groups", "").split())
    if "timeout" in fields:
        t.timeout = parse_timeout(fields["timeout"])
    # the runner passes `-smp $smp` before the test's own options, which may override it
    argv = ["-smp", " ".join(expand(fields.get("smp", "1"), base))]
    argv += expand(fields.get("params", ""), base)
    test_args = fields.get("test_args")
    if test_args:
        argv += ["-append", " ".join(expand(test_args, base))]
    t.original = " ".join(filter(None, [fields.get("file", ""), f"-smp {fields.get('smp', '1')}",
                                        fields.get("params", ""), test_args or ""]))
    q = qemu_args.parse(argv)
    if q.cpus is not None:
        t.cpus = q.cpus
    t.mem = q.mem
    t.append = q.append or ""
    t.initrd = base / q.initrd if q.initrd else None
    t.irqchip = q.irqchip or "kernel"
    t.pit = q.pit
    t.cpu_features = q.cpu_features
    t.unsupported = q.unsupported
    t.notes = q.notes
    machine = fields.get("machine")
    if machine and machine not in qemu_args.MACHINES:
        t.unsupported.append(f"needs QEMU machine {machine}")
    # the runner's reasons to skip, in its order
    if not groups_selected and not run_all and "nodefault" in t.groups:
        t.skip = "test marked as manual run only (group nodefault)"
    elif fields.get("arch") and fields["arch"] != ARCH:
        t.skip = f"{fields['arch']} only"
    elif fields.get("accel") and fields["accel"] != "kvm":
        t.skip = f"needs accel {fields['accel']}; pyvmm runs on KVM"
    elif fields.get("disabled_if") and bash_true(fields["disabled_if"], base):
        t.skip = f"disabled because: {fields['disabled_if']}"
    else:
        for check in fields.get("check", "").split():
            file, _, want = check.partition("=")
            try:
                have = read_check(Path(file))
            except FileRefused as e:
                raise ValueError(f"check {check}: {e}") from None
            if have != want:
                t.skip = f"{file} not equal to {want}"
                break
    if t.skip is None and not t.kernel.is_file():
        t.skip = f"kernel {t.kernel} not found (build it first)"


def environ_file(test: SuiteTest, directory: Path) -> Path:
    """The environment kvm-unit-tests' scripts hand a test as ``-initrd`` (ENVIRON_DEFAULT):
    the accelerator and the host kernel's version, ``KEY=value`` lines."""
    release = platform.release()
    parts = [*re.split(r"[.-]", release), "", "", ""]
    lines = {"QEMU_ACCEL": "kvm", "QEMU_VERSION_STRING": "pyvmm",
             "KERNEL_VERSION_STRING": release, "KERNEL_VERSION": parts[0],
             "KERNEL_PATCHLEVEL": parts[1],
             "KERNEL_SUBLEVEL": re.sub(r"[^0-9].*", "", parts[2]),
             "KERNEL_EXTRAVERSION": re.sub(r"[^0-9].*", "", parts[3])}
    path = directory / f"{re.sub(r'[^A-Za-z0-9_-]', '_', test.name)}.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    return path

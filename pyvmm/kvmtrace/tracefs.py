"""tracefs: finding (or mounting) it, and the private instance one capture lives in.

An instance (``instances/NAME``) has its own ring buffers, clock, pid list, event enables,
filters and triggers: a capture in one never sees or changes another pyvmm's, trace-cmd's
or the top-level buffer.  Instances are named ``pyvmm-PID-N``, so one left behind by a
process that was killed (SIGKILL: no clean-up can run) is removed by the next capture once
its process is gone.  Every failure is one line naming what is missing
(:class:`KvmTraceError`, status 2): not root, no tracefs, a read-only or locked-down one.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import subprocess
from pathlib import Path

from pyvmm.errors import ConfigError

#: where tracefs lives on current kernels, then where older ones put it (under debugfs)
CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
PREFIX = "pyvmm-"
_counter = itertools.count()
#: the groups KVM's x86 tracepoints are in
KVM_GROUPS = ("kvm", "kvmmmu")


class KvmTraceError(ConfigError):
    """KVM tracing cannot be done as asked (status 2): what is missing, in one line."""


def is_tracefs(path: Path) -> bool:
    """``path`` is a usable tracefs; KvmTraceError when it is one this user may not use
    (tracefs is root's: mode 0700)."""
    try:
        return (path / "instances").is_dir() and (path / "events").is_dir()
    except PermissionError:
        raise KvmTraceError(f"KVM tracing needs root: tracefs at {path} is not accessible "
                            "to this user") from None


def _mounted() -> list[Path]:
    found = []
    with contextlib.suppress(OSError), open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "tracefs":
                found.append(Path(parts[1].replace("\\040", " ")))
    return found


def find_tracefs(mount: bool = True) -> Path:
    """The tracefs mount, mounting it at /sys/kernel/tracing when it is not mounted and
    this process may (root); KvmTraceError saying why not otherwise."""
    for path in (*_mounted(), *CANDIDATES):
        if is_tracefs(path):
            return path
    target = CANDIDATES[0]
    if not mount:
        raise KvmTraceError(f"tracefs is not mounted ({target} is empty)")
    if os.geteuid() != 0:
        raise KvmTraceError(f"KVM tracing needs tracefs, which is not mounted, and mounting it "
                            f"needs root (as root: mount -t tracefs nodev {target})")
    if not target.is_dir():
        raise KvmTraceError(f"this kernel has no {target} to mount tracefs on "
                            "(CONFIG_TRACING off?)")
    try:
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(target)], check=True,
                       capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        why = getattr(e, "stderr", "") or str(e)
        raise KvmTraceError(f"cannot mount tracefs on {target}: {why.strip()}") from None
    if not is_tracefs(target):
        raise KvmTraceError(f"mounted tracefs on {target} but it has no instances/ or events/")
    return target


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(root: Path) -> list[str]:
    """Remove the instances of pyvmm processes that no longer exist; their names."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in (root / "instances").iterdir():
            m = re.fullmatch(rf"{PREFIX}(\d+)-\d+", entry.name)
            if m and not _pid_alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    entry.rmdir()
                    removed.append(entry.name)
    return removed


class Instance:
    """One private trace instance, created by :meth:`create`, gone after :meth:`remove`."""

    def __init__(self, root: Path, path: Path) -> None:
        self.root = root
        self.path = path

    @classmethod
    def create(cls, root: Path) -> Instance:
        name = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        path = root / "instances" / name
        try:
            path.mkdir()
        except OSError as e:
            what = {errno.EROFS: "tracefs is mounted read-only",
                    errno.EACCES: "no permission to create trace instances (not root?)",
                    errno.EPERM: "creating trace instances is not permitted (not root, or "
                                 "kernel lockdown)",
                    errno.ENOENT: "this tracefs has no instances/ directory"}.get(
                        e.errno or 0, f"cannot create trace instance {path}: {e.strerror}")
            raise KvmTraceError(f"KVM tracing: {what}") from None
        return cls(root, path)

    def write(self, rel: str, value: str, what: str | None = None) -> None:
        """Write ``value`` to the instance's file ``rel``; KvmTraceError with tracefs'
        own explanation (its ``error_log``) when the kernel refuses it."""
        try:
            with open(self.path / rel, "w") as f:
                f.write(value)
        except OSError as e:
            detail = self.last_error()
            raise KvmTraceError(f"{what or f'writing {value!r} to {rel}'} was refused by tracefs: "
                                f"{detail or e.strerror}") from None

    def read(self, rel: str) -> str:
        return (self.path / rel).read_text()

    def last_error(self) -> str:
        """The newest entry of the instance's ``error_log`` (why a filter was refused)."""
        try:
            text = (self.path / "error_log").read_text().strip()
        except OSError:
            return ""
        if not text:
            return ""
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        # "[ts] event filter parse error: error: Field not found\n  Command: ...\n  ^"
        errors = [ln for ln in lines if "error" in ln.lower() and not ln.startswith("Command")]
        return (errors[-1].split("]", 1)[-1].strip() if errors else lines[-1])[:200]

    def remove(self) -> None:
        """Stop the instance and remove it (its buffers, enables and triggers go with it)."""
        with contextlib.suppress(OSError):
            (self.path / "tracing_on").write_text("0")
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno != errno.EBUSY:
                    return
                import time
                time.sleep(0.02)  # a reader fd still closing


def resolve_events(root: Path, specs: list[str]) -> list[tuple[str, str, str]]:
    """``kvm:kvm_pio``, ``kvm_pio``, ``kvmmmu:*``, ``kvm:*``, each optionally followed by
    ``if FILTER``, as (group, name, filter) of events that exist; KvmTraceError naming an
    unknown one (and what is near it)."""
    events = root / "events"
    out: list[tuple[str, str, str]] = []
    for raw in specs:
        spec, _, filt = raw.strip().partition(" if ")
        spec = spec.strip()
        if not spec:
            continue
        group, sep, name = spec.rpartition(":")
        groups = [group] if sep else [g for g in KVM_GROUPS if (events / g / name).is_dir()]
        if sep and group not in KVM_GROUPS:
            raise KvmTraceError(f"--kvm-trace: {spec!r} is not a KVM event (groups: "
                                f"{', '.join(KVM_GROUPS)})")
        if not re.fullmatch(r"[\w*]+", name):
            raise KvmTraceError(f"--kvm-trace: {spec!r} is not an event name")
        found = []
        for g in groups:
            gdir = events / g
            if not gdir.is_dir():
                continue
            found += [(g, e.name) for e in sorted(gdir.iterdir())
                      if e.is_dir() and _glob(name, e.name)]
        if not found:
            near = [e.name for g in KVM_GROUPS if (events / g).is_dir()
                    for e in (events / g).iterdir() if name.strip("*") and name.strip("*") in e.name]
            hint = f" (did you mean {', '.join(sorted(near)[:4])}?)" if near else ""
            where = f"group {group}" if sep else "the kvm and kvmmmu groups"
            raise KvmTraceError(f"--kvm-trace: this kernel has no event {spec!r} in {where}{hint}")
        for g, n in found:
            if not any(o[0] == g and o[1] == n for o in out):
                out.append((g, n, filt.strip()))
    return out


def _glob(pattern: str, name: str) -> bool:
    return re.fullmatch(".*".join(re.escape(p) for p in pattern.split("*")), name) is not None

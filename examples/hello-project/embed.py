"""Driving pyvmm from a Python tool of one's own; checked with ``mypy --strict``.

Usage: python embed.py GUEST.elf

Where /dev/kvm cannot be used (no KVM, or no access to it) it says so and skips, exit
status 0, as the project's pytest tests do; ``PYVMM_REQUIRE_KVM=1`` makes that a failure.
"""

from __future__ import annotations

import os
import sys

from pyvmm import HistoryLimits, KvmError, Machine, RunResult
from pyvmm.devices.ucall import GuestEvent
from pyvmm.kvm import Kvm


def kvm_unavailable() -> str | None:
    """Why /dev/kvm cannot be used here, or None when it can."""
    try:
        Kvm().close()
    except KvmError as e:
        return str(e)
    return None


def main(path: str) -> int:
    reason = kvm_unavailable()
    if reason is not None:
        if os.environ.get("PYVMM_REQUIRE_KVM") == "1":
            print(f"embed.py: PYVMM_REQUIRE_KVM=1 but KVM is unusable: {reason}", file=sys.stderr)
            return 1
        print(f"embed.py: skipped: needs /dev/kvm: {reason}")
        return 0
    with Machine.from_file(path, cmdline="fib 30", mem="32M",
                           history=HistoryLimits(serial=4096, events=100)) as m:
        answer = m.symbols.address_of("answer") if m.symbols else None
        assert answer is not None

        def reply(ev: GuestEvent) -> None:
            m.memory.write_int(answer, 8, ev.args[1] * 2)

        m.on_sync(reply)
        result: RunResult = m.run(timeout=30)
        regs: dict[str, int] = m.vcpus[0].get_regs()
        value: int = m.memory.read_int(answer, 8)
        exits: int = result.stats["vcpu0"]["exits"]
        print(f"{result.status} fib(30)*2={value} rip={regs['rip']:#x} exits={exits} "
              f"kvm_runs={result.kvm_runs}")
        return 0 if result.ok and value == 832040 * 2 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

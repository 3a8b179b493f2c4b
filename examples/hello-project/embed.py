"""Driving pyvmm from a Python tool of one's own; checked with ``mypy --strict``.

Usage: python embed.py GUEST.elf
"""

from __future__ import annotations

import sys

from pyvmm import HistoryLimits, Machine, RunResult
from pyvmm.devices.ucall import GuestEvent


def main(path: str) -> int:
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

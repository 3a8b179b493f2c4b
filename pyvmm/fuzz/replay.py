"""Replaying one input from the input point's snapshot (``pyvmm fuzz-target
--save-snapshot SNAP``): ``pyvmm run --from-snapshot SNAP --input FILE``, with --core and
--gdb as for any run.

The snapshot holds the vCPU stopped on GUEST_FUZZ_INPUT's port write, RDI still pointing
at the sync's ``struct ucall``: the input point is read back from there (every value
checked, as the fuzzer checks it), so a snapshot needs nothing beside it.  The run then
ends where a fuzzing run ends: at the next GUEST_FUZZ_INPUT, as GUEST_DONE.
"""

from __future__ import annotations

from pyvmm.devices.bus import GuestStop
from pyvmm.devices.ucall import GuestEvent
from pyvmm.fuzz.target import FUZZ_STAGE, FuzzSetupError, input_point, write_input
from pyvmm.machine import Machine


def prepare(m: Machine, data: bytes) -> int:
    """Write ``data`` where the snapshot's GUEST_FUZZ_INPUT wants it; returns its length."""
    rdi = m.vcpus[0].get_regs()["rdi"]
    event = m.ucall.decode(rdi, 0)
    if event.kind != "sync" or event.stage != FUZZ_STAGE:
        raise FuzzSetupError("--input: the snapshot is not stopped at GUEST_FUZZ_INPUT (save one "
                             "with pyvmm fuzz-target --save-snapshot FILE)")
    n = write_input(m, input_point(m, event), data)

    def end_at_next_input(ev: GuestEvent) -> None:
        if ev.stage == FUZZ_STAGE:
            raise GuestStop(0, "done", ev)

    m.on_sync(end_at_next_input)
    return n

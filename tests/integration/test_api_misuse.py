"""Misusing the Python API gets one clear error naming the misuse (issue 17), never an
ioctl's errno, a thread's traceback, an AttributeError or a wait for ever."""

from __future__ import annotations

import math
import time

import pytest

import pyvmm
from pyvmm import Machine
from pyvmm.errors import ConfigError, MachineClosedError, MachineStateError, PyvmmError

T = 30


@pytest.fixture
def closed(guests):
    m = Machine.from_elf(guests / "protocol.elf", cmdline="sync")
    m.close()
    return m


@pytest.mark.parametrize("call", [
    lambda m: m.run(timeout=T), lambda m: m.start(timeout=T), lambda m: m.snapshot(),
    lambda m: m.stats(), lambda m: m.vcpu_loop(0), lambda m: m.debug,
    lambda m: m.next_event(0), lambda m: m.add_pc_platform(), lambda m: m.enable_trace(),
    lambda m: m.load_file("nothing.elf"), lambda m: m.add_ram(1 << 32, 4096),
], ids=["run", "start", "snapshot", "stats", "vcpu_loop", "debug", "next_event",
        "add_pc_platform", "enable_trace", "load_file", "add_ram"])
def test_every_call_after_close_says_the_machine_is_closed(closed, call, recwarn):
    with pytest.raises(MachineClosedError, match=r"on a closed Machine") as e:
        call(closed)
    assert "KVM_" not in str(e.value) and isinstance(e.value, RuntimeError | PyvmmError)
    time.sleep(0.05)  # a thread start() would have started has had time to fail
    assert not [w for w in recwarn if "thread" in str(w.message).lower()]


def test_restore_after_close_names_the_close(guests):
    with Machine.from_elf(guests / "protocol.elf", cmdline="sync") as m:
        snap = m.snapshot()
    with pytest.raises(MachineClosedError, match=r"restore\(\) on a closed Machine"):
        m.restore(snap)


def test_wait_event_before_start_is_refused_not_a_hang(guests):
    with Machine.from_elf(guests / "protocol.elf", cmdline="sync") as m:
        t0 = time.monotonic()
        with pytest.raises(MachineStateError, match=r"call start\(\) first"):
            m.wait_event("sync")
        with pytest.raises(MachineStateError, match=r"start\(\)"):
            m.join()
        assert time.monotonic() - t0 < 5


def test_wait_event_returns_none_when_the_run_ends_without_one(guests):
    with Machine.from_elf(guests / "protocol.elf", cmdline="sync") as m:
        m.start(timeout=T)
        assert m.wait_event("sync", stage=99) is None  # no timeout: the run's end ends it
        assert m.join(T).status == "done"


def test_restore_of_a_file_name_is_a_type_error(guests, tmp_path):
    with Machine.from_elf(guests / "protocol.elf", cmdline="sync") as m:
        m.snapshot().save(tmp_path / "file.snap")
        with pytest.raises(TypeError, match=r"restore\(\) takes a Snapshot, not str 'file.snap'.*"
                                            r"from_snapshot"):
            m.restore("file.snap")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, -0.5, math.nan])
def test_negative_or_nan_timeout_is_refused(guests, bad):
    with Machine.from_elf(guests / "protocol.elf", cmdline="sync") as m:
        for call in (m.run, m.start):
            with pytest.raises(ValueError, match=r"not a number of seconds >= 0") as e:
                call(timeout=bad)
            assert isinstance(e.value, ConfigError)
        assert m.run(timeout=T).status == "done"  # nothing ran: the guest is untouched


def test_start_refuses_an_ended_guest_at_once(guests):
    with Machine.from_elf(guests / "protocol.elf", cmdline="sync") as m:
        assert m.run(timeout=T).status == "done"
        with pytest.raises(pyvmm.GuestExitedError):
            m.start(timeout=T)


def test_int_memory_is_bytes_and_the_error_asks_about_mib():
    with pytest.raises(ConfigError, match=r"64 bytes .* did you mean '64M'\?"):
        Machine(mem=64)
    with pytest.raises(ConfigError, match=r"int \(bytes\) or a size string"):
        Machine(mem=64.0)  # type: ignore[arg-type]


def test_dir_lists_the_api_not_the_lazy_module_helpers():
    names = dir(pyvmm)
    assert {"Machine", "RunResult", "RunStatus", "Space", "PyvmmError", "MachineStateError",
            "__version__"} <= set(names)
    assert not {"TYPE_CHECKING", "annotations", "DISTRIBUTION", "_LAZY"} & set(names)
    for name in pyvmm.__all__:
        assert getattr(pyvmm, name) is not None


def test_help_documents_the_attributes_users_reach_for():
    import pydoc

    text = pydoc.render_doc(Machine, renderer=pydoc.plaintext)
    for attr in ("memory", "vcpus", "symbols", "mem_size"):
        assert f"``{attr}``" in text, attr
    assert Machine.symbols.__doc__

"""The guest-host test protocol (pyvmm/guest/include/pyvmm/ucall.h <-> pyvmm/devices/ucall.py)."""

from __future__ import annotations

from pyvmm import Machine

T = 30


def run(guests, cmdline, **kw):
    with Machine.from_elf(guests / "protocol.elf", cmdline=cmdline, **kw) as m:
        seen = []
        m.on_sync(lambda ev: seen.append((ev.vcpu, ev.args)))
        r = m.run(timeout=T)
    return r, seen


def test_sync_print_done(guests):
    r, seen = run(guests, "sync")
    assert r.status == "done" and r.ok
    assert seen == [(0, (1, 10, 20)), (0, (2,))]
    assert [e.stage for e in r.syncs()] == [1, 2]
    assert r.prints == ["hello from the guest: 42 ok"]
    assert "hello from the guest: 42 ok\n" in r.text  # echoed to the console too


def test_assert_eq_names_file_line_expression_and_values(guests):
    r, _ = run(guests, "assert-eq")
    assert r.status == "assert" and not r.ok
    a = r.assertion
    assert a.file.endswith("protocol.c") and a.line > 0
    assert a.expr == "three == 4" and a.args == (3, 4)
    assert r.message == f"guest assertion failed at {a.file}:{a.line}: three == 4 (0x3 != 0x4)"


def test_plain_assert(guests):
    r, _ = run(guests, "assert")
    assert r.status == "assert" and r.assertion.expr == "bi->ncpus == 99" and r.assertion.args == ()


def test_unhandled_exception_is_reported_with_symbol(guests):
    r, _ = run(guests, "ud")
    assert r.status == "assert"
    ev = r.assertion
    assert ev.kind == "exception" and ev.args[0] == 6
    assert ev.symbol.startswith("main")
    assert "#UD" in r.message


def test_guest_handler_takes_the_exception(guests):
    r, _ = run(guests, "handled")
    assert r.status == "done"


def test_ucall_struct_above_4g(guests):
    r, seen = run(guests, "high", mem="3200M")  # RAM continues at 4 GiB
    assert r.status == "done", r.message
    assert seen == [(0, (7, 0x100000000))]


def test_bad_pointer_is_an_error_event_not_a_crash(guests):
    r, _ = run(guests, "badptr")
    assert r.status == "assert"
    assert "not in RAM" in r.assertion.text


def test_every_vcpu_can_sync(guests):
    r, seen = run(guests, "smp", cpus=2)
    assert r.status == "done", r.message
    assert sorted(seen) == [(0, (100,)), (1, (101,))]


def test_wait_for_events_while_the_guest_runs(guests):
    with Machine.from_elf(guests / "protocol.elf", cmdline="sync") as m:
        m.start(timeout=T)
        ev = m.wait_event("sync", stage=2, timeout=T)
        assert ev is not None and ev.args == (2,)
        assert m.wait_event("print", timeout=T).text.startswith("hello from the guest")
        r = m.join(T)
    assert r.status == "done"


def test_stop_a_running_guest(guests):
    with Machine.from_elf(guests / "selftest.elf", cmdline="spin") as m:
        m.start()
        assert m.wait_event(timeout=0.2) is None  # spinning: nothing to say
        m.stop()
        r = m.join(T)
    assert r.status == "stopped"

"""pytest plugin for guest tests (registered through the ``pytest11`` entry point).

Fixtures
    ``pyvmm_machine(guest, **kw)``: a :class:`~pyvmm.Machine` from a guest file (ELF64 or
    multiboot, detected), closed after the test.  ``run_guest(guest, cmdline="", **kw)``:
    build, run and check in one call; a guest assertion, unhandled exception, crash,
    timeout or VMM error fails the test with the guest's own words (file:line,
    expression, values; vector and RIP).

    ``booted_guest(guest, at_sync=STAGE, cmdline="", **kw)``: the guest booted once per
    pytest process (per xdist worker), run to its first GUEST_SYNC of STAGE and
    snapshotted there; every test that asks for it gets that machine restored to the
    snapshot (tens to hundreds of microseconds instead of a new VM).  Sync and event
    handlers a test adds are dropped before the next test.
Markers
    ``@pytest.mark.kvm``: needs a usable /dev/kvm.  Skips with the reason, unless
    ``PYVMM_REQUIRE_KVM=1``, which turns the skip into a failure.
    ``@pytest.mark.requires("feature", ..., caps=("CAP", ...))``: host features as
    ``pyvmm doctor`` finds them, or KVM capabilities; skips naming what is missing.
    ``kvm_trace(machine=None, events=None, stacks=False)``: a
    :class:`~pyvmm.kvmtrace.KvmTrace` of KVM's own events (``with kvm_trace(m) as kt:
    m.run()``, then ``kt.count("kvm_pio")``); skips unless the host can trace KVM
    (``requires("kvm-trace")``: root, tracefs); every capture is stopped after the test.
    ``@pytest.mark.guest_timeout(seconds)``: the limit for every guest run in the test
    (default 30 s); the vCPUs are always stopped when it passes.

The stats delta of a run is on the result: ``result.stats["vcpu0"]["insn_emulation"]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from pyvmm.machine import Machine, RunResult

if TYPE_CHECKING:
    from pyvmm.kvmtrace import KvmTrace

DEFAULT_TIMEOUT = 30.0
#: how a skip for want of KVM begins (``pyvmm suite`` counts them to say what to do)
KVM_SKIP = "needs /dev/kvm: "
FAILED = {"assert", "crash", "timeout", "error", "io-error", "interrupted"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kvm: needs a usable /dev/kvm (PYVMM_REQUIRE_KVM=1: "
                            "fail instead of skip)")
    config.addinivalue_line("markers", "requires(*features, caps=()): host features found by "
                            "`pyvmm doctor` and KVM capabilities the test needs")
    config.addinivalue_line("markers", "guest_timeout(seconds): limit for each guest run")


def kvm_unavailable_reason() -> str | None:
    """None when /dev/kvm opens and answers, else why not."""
    from pyvmm.kvm import Kvm, KvmError

    try:
        Kvm().close()
    except KvmError as e:
        return str(e)
    return None


def skip_here(reason: str) -> NoReturn:
    """Skip the running test, reported at the test (``pytest -rs`` shows its file and
    line) instead of the line in this module that decided it, as pytest reports a
    ``skipif`` marker's skip."""
    raise pytest.skip.Exception(reason, _use_item_location=True)


def require_kvm() -> None:
    """Skip (or, with PYVMM_REQUIRE_KVM=1, fail) when KVM is unusable."""
    reason = kvm_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("PYVMM_REQUIRE_KVM") == "1":
        pytest.fail(f"PYVMM_REQUIRE_KVM=1 but KVM is unusable: {reason}", pytrace=False)
    skip_here(f"{KVM_SKIP}{reason}")


def require(features: tuple[str, ...] = (), caps: tuple[str, ...] = ()) -> None:
    """Skip unless the host has every feature and capability, naming the first missing."""
    require_kvm()
    if caps:
        from pyvmm.kvm import Kvm

        with Kvm() as kvm:
            for cap in caps:
                if not kvm.capabilities.get(cap):
                    skip_here(f"host KVM lacks KVM_CAP_{cap}")
    if features:
        from pyvmm.doctor import PROBES, host_features

        known = {name for name, _, _ in PROBES}
        for feat in features:
            if feat not in known:
                raise pytest.UsageError(f"unknown host feature {feat!r} (see `pyvmm doctor`)")
        found = host_features()
        for feat in features:
            f = found.features[feat]
            if f.works is None:
                # the probe itself failed: that says nothing about the host
                msg = f"could not probe host feature {feat}: {f.detail}"
                if os.environ.get("PYVMM_REQUIRE_KVM") == "1":
                    pytest.fail(f"PYVMM_REQUIRE_KVM=1 but {msg}", pytrace=False)
                skip_here(msg)
            if not f.works:
                skip_here(f"host lacks {feat}: {f.detail}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kvm"):
        require_kvm()
    for marker in item.iter_markers("requires"):
        require(tuple(marker.args), tuple(marker.kwargs.get("caps", ())))


def check(result: RunResult, expect: str = "ok") -> RunResult:
    """Fail the test, in the guest's own words, unless the run ended as ``expect``
    (``ok``: exit 0 or GUEST_DONE; or a status name such as ``crash``)."""
    good = result.ok if expect == "ok" else result.status == expect
    if not good:
        detail = result.message
        if result.crash is not None:
            detail = result.crash.format()
        tail = result.text[-2000:]
        # str(): a RunStatus as its user-facing name ('assert'), not <RunStatus.ASSERT: ...>
        pytest.fail(f"guest run ended with status {str(result.status)!r}, expected {expect!r}: "
                    f"{detail}" + (f"\n--- guest output ---\n{tail}" if tail else ""),
                    pytrace=False)
    return result


def _timeout(request: pytest.FixtureRequest) -> float:
    marker = request.node.get_closest_marker("guest_timeout")
    return float(marker.args[0]) if marker else DEFAULT_TIMEOUT


@pytest.fixture
def pyvmm_machine(request: pytest.FixtureRequest) -> Iterator[Callable[..., Machine]]:
    """Factory for machines that are closed when the test ends."""
    require_kvm()
    made: list[Machine] = []

    def make(guest: str | Path, **kw: Any) -> Machine:
        m = Machine.from_file(guest, **kw)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


@pytest.fixture
def run_guest(request: pytest.FixtureRequest,
              pyvmm_machine: Callable[..., Machine]) -> Callable[..., RunResult]:
    """``run_guest(guest, cmdline="", expect="ok", setup=None, **machine_kw)``: build,
    optionally ``setup(machine)``, run under the test's guest timeout and check."""
    limit = _timeout(request)

    def run(guest: str | Path, cmdline: str = "", *, expect: str = "ok",
            setup: Callable[[Machine], None] | None = None, **kw: Any) -> RunResult:
        m = pyvmm_machine(guest, cmdline=cmdline, **kw)
        if setup is not None:
            setup(m)
        return check(m.run(timeout=limit), expect)

    return run


class _Booted:
    """One booted guest kept for the session: the machine, its snapshot, and how many
    handlers it had when the snapshot was taken."""

    def __init__(self, machine: Machine, snap: Any) -> None:
        self.machine = machine
        self.snap = snap
        self.sync_handlers = len(machine.ucall.sync_handlers)
        self.listeners = len(machine._hub.listeners)
        self.boots = 1
        self.restores = 0


@pytest.fixture(scope="session")
def _pyvmm_booted() -> Iterator[dict[tuple[str, int, str, str], _Booted]]:
    cache: dict[tuple[str, int, str, str], _Booted] = {}
    yield cache
    for b in cache.values():
        b.machine.close()


@pytest.fixture
def booted_guest(request: pytest.FixtureRequest,
                 _pyvmm_booted: dict[tuple[str, int, str, str], _Booted]) -> Callable[..., Machine]:
    """``booted_guest(guest, at_sync=STAGE, cmdline="", **machine_kw)``: the session's
    machine for that guest, restored to its snapshot at GUEST_SYNC ``STAGE``."""
    require_kvm()
    limit = _timeout(request)

    def get(guest: str | Path, at_sync: int, cmdline: str = "", **kw: Any) -> Machine:
        key = (str(Path(guest).resolve()), at_sync, cmdline, repr(sorted(kw.items())))
        b = _pyvmm_booted.get(key)
        if b is not None:
            m = b.machine
            del m.ucall.sync_handlers[b.sync_handlers:]
            del m._hub.listeners[b.listeners:]
            m.restore(b.snap)
            b.restores += 1
            return m
        m = Machine.from_file(guest, cmdline=cmdline, **kw)
        r = m.run_to_sync(at_sync, limit)
        if not r.syncs(at_sync) or r.status != "stopped":
            m.close()
            check(r, "stopped")  # fails in the guest's words
            pytest.fail(f"{guest} never reached GUEST_SYNC {at_sync}", pytrace=False)
        b = _pyvmm_booted[key] = _Booted(m, m.snapshot())
        return m

    return get


@pytest.fixture
def kvm_trace(request: pytest.FixtureRequest) -> Iterator[Callable[..., KvmTrace]]:
    """``kvm_trace(machine=None, events=None, stacks=False, **kw)``: a capture of KVM's own
    tracepoints (not started: use it as a ``with`` block); with a machine, its run results
    carry it (``RunResult.kvm_trace``)."""
    require(("kvm-trace",))
    from pyvmm.kvmtrace import KvmTrace

    made: list[KvmTrace] = []

    def make(machine: Machine | None = None, events: Any = None, stacks: Any = False,
             **kw: Any) -> KvmTrace:
        kt = machine.kvm_trace(events, stacks=stacks, **kw) if machine is not None \
            else KvmTrace(events, stacks=stacks, **kw)
        made.append(kt)
        return kt

    yield make
    for kt in made:
        kt.stop()

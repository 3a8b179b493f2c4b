"""LAPIC timers (one-shot, periodic, TSC-deadline; xAPIC and x2APIC) and HLT blocking.

Timer accuracy is asserted loosely (HOST-KVM.md: delivery is 30-80 us late, sometimes
milliseconds): never early (checked in the guest), median period within 20 %.  Waiting in
HLT must cost no userspace exit: the only exits are the two protocol calls.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pyvmm.pytest_plugin import require

FEATURE = {"xapic": "xapic-timer", "x2apic": "x2apic-timer"}


def run_timer(run_guest, guests, cmdline, *features):
    require(features)
    khz = {}

    def setup(m):
        khz["v"] = m.vcpus[0].get_tsc_khz()
        m.memory.write_int(m.image.symbols.address_of("tsc_per_us"), 8, khz["v"] // 1000)

    r = run_guest(guests / "timer.elf", cmdline, setup=setup)
    _stage, _mode, n, lo, mid, hi = r.syncs(1)[0].args
    return r, n, [x * 1000 / khz["v"] for x in (lo, mid, hi)]


def halted(r, n):
    """The guest waited in HLT inside KVM: no userspace exit but the 2 protocol calls."""
    assert r.exit_counts == {"IO": 2}, r.exit_counts
    vcpu = r.stats["vcpu0"]
    assert vcpu.get("halt_exits", 0) >= n and vcpu.get("halt_wakeup", 0) >= 1, vcpu


@pytest.mark.parametrize("apic", ["xapic", "x2apic"])
@pytest.mark.parametrize("mode", ["oneshot", "deadline"])
def test_one_shot_and_deadline(run_guest, guests, mode, apic):
    extra = ("tsc-deadline",) if mode == "deadline" else ()
    r, n, (lo, mid, hi) = run_timer(run_guest, guests, f"{mode} {apic} 5 1000",
                                    FEATURE[apic], *extra)
    assert n == 5
    assert 0 <= lo <= mid <= hi < 50_000, (lo, mid, hi)  # late, but not absurdly
    halted(r, n)


@pytest.mark.parametrize("apic", ["xapic", "x2apic"])
def test_periodic(run_guest, guests, apic):
    r, n, (_lo, mid, _hi) = run_timer(run_guest, guests, f"periodic {apic} 10 1000", FEATURE[apic])
    assert n == 10 and 800 <= mid <= 1200, mid
    halted(r, n)


def test_periodic_below_the_minimum_is_clamped(run_guest, guests):
    p = Path("/sys/module/kvm/parameters/min_timer_period_us")
    floor = int(p.read_text()) if p.exists() else 0
    _r, _n, (_lo, mid, _hi) = run_timer(run_guest, guests, "periodic xapic 10 50", "xapic-timer")
    expected = max(50, floor)  # KVM's min_timer_period_us, read from this host
    # the clamp shows as a lower bound: an unclamped timer fires every 50 us.  Above, only
    # "not absurd": at a 200 us period a loaded host coalesces ticks (a median of 617 us was
    # seen on a clean-clone CI run beside three builds), which says nothing about the clamp
    assert 0.8 * expected <= mid < 50_000, (mid, floor)

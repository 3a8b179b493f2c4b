"""`pyvmm doctor` and the plugin's `requires` marker: features decided by probing."""

from __future__ import annotations

import json

import pytest
from cli import pyvmm

from pyvmm.doctor import HostFeatures, host_features, probe_guest
from pyvmm.hostinfo import detect


@pytest.fixture(scope="module")
def found(guests):
    return host_features()


def test_probes_agree_with_the_module(found):
    host = detect()
    assert found.features["tdp"].works == host.tdp
    # kvm_pvm emulates CPL0 code and cannot run popcnt there; VMX/SVM run it natively
    assert found.features["cpl0-native"].works == (host.module != "kvm_pvm")
    for always in ("xapic-timer", "smp", "dirty-log", "singlestep"):
        assert found.features[always].works, found.features[always].detail


def test_cache_round_trip(found, tmp_path, monkeypatch):
    again = HostFeatures.from_json(found.to_json())
    assert again.features == found.features and again.key == found.key


def test_cli_json(guests, tmp_path):
    p = pyvmm("doctor", "--json", timeout=120)
    assert p.returncode == 0, p.stderr
    names = {f["name"] for f in json.loads(p.stdout)["features"]}
    assert {"tdp", "pcid", "1g-pages", "xapic-timer", "smp"} <= names


@pytest.mark.requires("cpl0-native")
def test_popcnt_runs_natively(run_guest, guests):
    """Runs only where CPL0 code runs on the CPU (VMX/SVM); skipped by name here."""
    run_guest(guests / "selftest.elf", "popcnt")


@pytest.mark.requires("xapic-timer", caps=("TSC_DEADLINE_TIMER",))
def test_requires_passes_when_present(run_guest, guests):
    r = run_guest(probe_guest(), "tsc-deadline")
    assert r.syncs(1)[0].args[1] == 1

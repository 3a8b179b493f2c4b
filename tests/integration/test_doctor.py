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


def test_no_probe_errors_on_a_working_host(found):
    assert found.errors == [], [(f.name, f.detail) for f in found.errors]


def test_a_probe_that_cannot_run_is_an_error_never_a_cached_no(monkeypatch, tmp_path):
    """Issue #7: a missing probe guest was cached as "the host lacks X", and later runs
    silently skipped tests.  Now it is an error, nothing is cached, and requires() fails
    under PYVMM_REQUIRE_KVM=1."""
    import pyvmm.doctor as doctor
    from pyvmm.pytest_plugin import require

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(doctor, "_MEMO", None)
    monkeypatch.setattr(doctor, "probe_guest", lambda: (_ for _ in ()).throw(
        doctor.ProbeError("the probe guest is missing from this pyvmm install")))
    found = doctor.host_features(refresh=True)
    smp = found.features["smp"]
    assert smp.works is None and "missing" in smp.detail
    assert found.features["tdp"].works is not None  # host-side probes still answer
    assert not list(tmp_path.rglob("doctor-*.json"))  # nothing cached
    monkeypatch.setenv("PYVMM_REQUIRE_KVM", "1")
    with pytest.raises(pytest.fail.Exception, match="could not probe host feature smp"):
        require(("smp",))
    monkeypatch.setenv("PYVMM_REQUIRE_KVM", "0")
    with pytest.raises(pytest.skip.Exception, match="could not probe host feature smp"):
        require(("smp",))


def test_cache_key_covers_the_probe_set(monkeypatch):
    import pyvmm.doctor as doctor

    key, _ = doctor.host_key()
    monkeypatch.setattr(doctor, "PROBE_SET_VERSION", doctor.PROBE_SET_VERSION + 1)
    assert doctor.host_key()[0] != key


def test_doctor_ships_its_probe_guest():
    """No PYVMM_GUESTS, no source tree: the probe guest is package data of the install."""
    path = probe_guest()
    assert path.is_file() and path.parent.name == "probes" and path.read_bytes()[:4] == b"\x7fELF"


def test_cli_doctor_in_a_fresh_cache(tmp_path):
    p = pyvmm("doctor", env={"XDG_CACHE_HOME": str(tmp_path)}, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "smp" in p.stdout and "ERROR" not in p.stdout
    assert len(list((tmp_path / "pyvmm").glob("doctor-*.json"))) == 1


@pytest.mark.kvm
def test_doctor_says_when_the_answer_could_not_be_cached(tmp_path):
    """It said "cached in ..." when the cache write had failed."""
    home = tmp_path / "not-a-dir"
    home.write_text("")
    p = pyvmm("doctor", env={"XDG_CACHE_HOME": str(home)}, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "could not be cached in" in p.stdout and "Not a directory" in p.stdout
    assert "(cached in" not in p.stdout

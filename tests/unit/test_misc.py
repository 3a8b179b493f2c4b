import pytest

from pyvmm.hostinfo import detect
from pyvmm.x86.cpuid import vcpu_cpuid
from pyvmm.x86.layout import GiB, MiB, parse_size, ram_ranges
from pyvmm.x86.segments import CODE64, DATA, gdt_bytes


@pytest.mark.parametrize("text, value", [("64M", 64 * MiB), ("1G", GiB), ("4096", 4096),
                                         ("512k", 512 * 1024), ("2GiB", 2 * GiB), ("1T", 1024 * GiB),
                                         ("0.5G", GiB // 2), ("1.5G", 3 * GiB // 2), (".25M", MiB // 4),
                                         ("2.0T", 2048 * GiB), ("1.5k", 1536)])
def test_parse_size(text, value):
    assert parse_size(text) == value


def test_bare_numbers_are_mib_as_qemu():
    assert parse_size("128", default_unit=MiB) == 128 * MiB


def test_fractions_are_taken_as_qemu_takes_them():
    """``0.5G`` was refused; QEMU's ``-m 0.5G`` is 512 MiB."""
    assert parse_size("0.5", default_unit=MiB) == MiB // 2


@pytest.mark.parametrize("text, words", [
    ("", "not a size"), ("M", "not a size"), ("-1M", "positive"), ("abc", "not a size"),
    ("0", "positive"), ("0.0G", "positive"), ("-0.5G", "not a size"), ("1.2.3M", "not a size"),
    ("0x1.8G", "not a size"), ("1e3M", "not a size"), ("0.1K", "not a whole number of bytes"),
    ("1." + "0" * 5000 + "1G", "not a size"), ("\uff11M", "not a size"),
])
def test_parse_size_refused(text, words):
    with pytest.raises(ValueError, match=words) as e:
        parse_size(text)
    assert "\n" not in str(e.value)


def test_ram_ranges_split_around_the_hole():
    assert ram_ranges(64 * MiB) == [(0, 64 * MiB)]
    assert ram_ranges(5 * GiB) == [(0, 3 * GiB), (4 * GiB, 2 * GiB)]


def test_gdt_descriptors_are_the_textbook_ones():
    assert CODE64.descriptor() == 0x00AF9B000000FFFF
    assert DATA.descriptor() == 0x00CF93000000FFFF
    assert len(gdt_bytes()) == 32


def test_cpuid_apic_ids():
    sup = [{"function": 1, "index": 0, "flags": 0, "eax": 0, "ebx": 0xFF00FFFF, "ecx": 0, "edx": 0},
           {"function": 0xB, "index": 0, "flags": 1, "eax": 0, "ebx": 0, "ecx": 0, "edx": 0}]
    out = vcpu_cpuid(sup, 3, 4)
    assert out[0]["ebx"] >> 24 == 3 and (out[0]["ebx"] >> 16) & 0xFF == 4
    assert out[0]["ecx"] & (1 << 31) and out[1]["edx"] == 3
    assert sup[0]["ebx"] == 0xFF00FFFF  # the input is not modified


def fake_sys(tmp_path, modules):
    for mod, params in modules.items():
        d = tmp_path / mod / "parameters"
        d.mkdir(parents=True)
        for k, v in params.items():
            (d / k).write_text(v + "\n")
    return tmp_path


def test_detect_mmu_kinds(tmp_path):
    ept = fake_sys(tmp_path / "a", {"kvm": {"tdp_mmu": "Y"}, "kvm_intel": {"ept": "Y"}})
    assert detect(ept).mmu == "tdp-ept"
    assert detect(fake_sys(tmp_path / "b", {"kvm": {}, "kvm_amd": {"npt": "1"}})).tdp
    assert detect(fake_sys(tmp_path / "c", {"kvm": {}, "kvm_intel": {"ept": "N"}})).mmu == "shadow"
    pvm = detect(fake_sys(tmp_path / "d", {"kvm": {"tdp_mmu": "N"}, "kvm_pvm": {}}))
    assert pvm.module == "kvm_pvm" and not pvm.tdp


def test_signal_handler_imports_nothing(monkeypatch):
    """pyvmm's signal handler runs wherever the signal lands, also in the middle of an
    import; it once imported pyvmm.errors itself, and a SIGTERM during the import of
    `collections` became "partially initialized module" and a traceback instead of one line
    and 143 (seen in CI, test_signal_during_start_up[15-0.0])."""
    import builtins

    from pyvmm import entry
    from pyvmm.errors import Interrupted

    def no_imports(*a, **kw):
        raise ImportError("an import inside the signal handler")

    caught: BaseException | None = None
    monkeypatch.setattr(entry, "_INTERRUPTED", Interrupted)  # as main() sets it
    with monkeypatch.context() as mp:
        mp.setattr(builtins, "__import__", no_imports)
        try:
            entry._raise_interrupted(15, None)
        except BaseException as e:
            caught = e
    assert isinstance(caught, Interrupted), repr(caught)
    assert (caught.signum, caught.name) == (15, "SIGTERM")

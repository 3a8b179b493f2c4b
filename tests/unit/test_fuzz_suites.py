"""Seeded fuzz of the suite readers: mutated unittests.cfg and manifest texts must each be
read (entries, maybe with a skip or an error of their own) or refused with
SuiteConfigError, never escape with another exception.  QEMU option lists get the same
treatment through the option mapper."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from pyvmm.suite import SuiteConfigError, kut, load, manifest, qemu_args
from pyvmm.suite.model import MAX_TIMEOUT, SuiteTest

DATA = Path(__file__).parent / "data"
TOKENS = ["[", "]", "=", '"""', "'", '"', "`", "$", "\n", "\\", ",", " -", "smp", "file",
          "qemu_params", "extra_params", "test_args", "timeout", "groups", "nodefault",
          "-cpu", "-smp", "-m", "-machine", "-device", "+", "\0", "\xff", "tests.", "kernel",
          "nan", "inf", "1e308", "64", "[" * 50, "{a=" * 20, "99999999999999999999"]


def mutate(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 8)):
        op = rng.random()
        pos = rng.randrange(len(chars) + 1)
        if op < 0.4:
            chars[pos:pos] = list(rng.choice(TOKENS))
        elif op < 0.7 and chars:
            del chars[pos:pos + rng.randint(1, 20)]
        elif chars:
            chars[min(pos, len(chars) - 1)] = chr(rng.randrange(1, 0x250))
    return "".join(chars)


def test_mutated_unittests_cfg_entries_are_read_without_bash(monkeypatch):
    # the reader alone, many times (bash expansion is exercised below, fewer times)
    rng = random.Random(21)
    text = (DATA / "kut-sample.cfg").read_text()
    entries = 0
    for _ in range(3000):
        entries += len(kut.read_entries(mutate(text, rng)))
    assert entries > 3000 * 10


def test_mutated_unittests_cfg_load_or_refuse(tmp_path):
    rng = random.Random(22)
    text = (DATA / "kut-sample.cfg").read_text()
    (tmp_path / "plain.flat").write_bytes(b"\0")
    cfg = tmp_path / "unittests.cfg"
    read = errors = 0
    for _ in range(40):
        cfg.write_text(mutate(text, rng), encoding="utf-8", errors="surrogateescape")
        try:
            tests = load(cfg)
        except SuiteConfigError:
            continue
        read += 1
        errors += sum(t.error is not None for t in tests)
    assert read == 40 and errors > 0


def sound(t: SuiteTest) -> None:
    """What a test read from any file must be: values of their types, in their ranges, and
    a command line that can be shown."""
    assert isinstance(t.cpus, int) and t.cpus >= 1
    assert math.isfinite(t.timeout) and 0 < t.timeout <= MAX_TIMEOUT
    assert t.mem is None or isinstance(t.mem, str)
    assert isinstance(t.append, str) and all(isinstance(g, str) for g in t.groups)
    assert t.pit in (None, True, False) and isinstance(t.expect_status, int)
    assert t.describe().startswith("pyvmm run ")


def test_mutated_manifests_load_or_refuse(tmp_path):
    rng = random.Random(23)
    text = (Path(__file__).parents[2] / "guests" / "pyvmm.toml").read_text()
    m = tmp_path / "pyvmm.toml"
    outcomes = {"read": 0, "refused": 0}
    for _ in range(1500):
        m.write_text(mutate(text, rng), encoding="utf-8", errors="surrogateescape")
        try:
            for t in load(m):
                sound(t)
            outcomes["read"] += 1
        except SuiteConfigError:
            outcomes["refused"] += 1
    assert outcomes["read"] > 100 and outcomes["refused"] > 100


#: values of every TOML type, and the ones that broke the reader before: an integer size
#: (shlex failed on it), NaN/inf/1e308 timeouts (never timed out), deep arrays (RecursionError)
HOSTILE_VALUES = ["64", '"64M"', '"64Q"', "nan", "inf", "-inf", "1e308", "0", "-1", "2.5",
                  "99999999999999999999", "true", '""', '"x"', "[]", '["a", 1]', '["smoke"]',
                  "{}", "{a = 1}", "1979-05-27", "07:32:00", '"kernel"', '"split"',
                  "[" * 3000 + "]" * 3000, "[" * 200 + "1" + "]" * 200]


def test_manifest_values_of_any_type_are_checked(tmp_path):
    rng = random.Random(24)
    (tmp_path / "k.elf").write_bytes(b"\0")
    m = tmp_path / "pyvmm.toml"
    keys = sorted(manifest.KEYS)
    read = refused = 0
    for _ in range(600):
        lines = ['kernel = "k.elf"'] if rng.random() < 0.9 else []
        lines += [f"{k} = {rng.choice(HOSTILE_VALUES)}" for k in rng.sample(keys, rng.randint(1, 4))
                  if k != "kernel" or not lines]
        m.write_text("[tests.t]\n" + "\n".join(lines) + "\n")
        try:
            (t,) = load(m)
        except SuiteConfigError as e:
            assert "\n" not in str(e) and str(e).startswith(str(m))
            refused += 1
            continue
        sound(t)
        read += 1
    assert read > 20 and refused > 300


@pytest.mark.parametrize("seed", [31, 32])
def test_random_qemu_option_lists_map_or_name_what_they_need(seed):
    rng = random.Random(seed)
    words = ["-smp", "-m", "-cpu", "-machine", "-M", "-device", "-append", "-initrd", "-accel",
             "2", "0", "99999", "1G", "q35", "pc,pit=off", "max,+x2apic,-pcid,vendor=x",
             "cpus=2,sockets=2", "edu", "kernel-irqchip=split", "", ",", "=", "--no-reboot",
             "-global", "host,hv_passthrough", "size=1G,slots=2", "smp=4"]
    for _ in range(5000):
        argv = [rng.choice(words) for _ in range(rng.randint(0, 8))]
        s = qemu_args.parse(argv)
        assert all(isinstance(x, str) and x for x in s.unsupported + s.notes)
        assert s.cpus is None or 1 <= s.cpus <= qemu_args.MAX_CPUS

"""pyvmm's own suite manifest, in TOML::

    [defaults]                 # optional: values every test gets unless it says otherwise
    timeout = 30

    [tests.hello]
    kernel = "build/hello.elf" # relative to the manifest
    cpus = 1
    mem = "64M"
    append = ""
    initrd = "env.txt"
    timeout = 10               # seconds
    expect_status = 0          # the exit status `pyvmm run` gives (0-255, or 120-143)
    expect_output = "Hello"    # a regular expression searched in the serial output
    groups = ["smoke"]
    irqchip = "kernel"         # kernel, split or none
    pit = true
    cpu_features = "+x2apic"

A test passes when the run's exit status is the expected one and the output matches.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pyvmm.suite.model import DEFAULT_TIMEOUT, MANIFEST, SuiteTest

KEYS = {"kernel", "cpus", "mem", "append", "initrd", "timeout", "expect_status",
        "expect_output", "groups", "irqchip", "pit", "cpu_features", "skip"}


class ManifestError(ValueError):
    """The manifest is not valid TOML or not in this format; the message says where."""


def parse(path: Path) -> list[SuiteTest]:
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"{path}: {e}") from None
    defaults = doc.get("defaults", {})
    tests = doc.get("tests")
    if not isinstance(tests, dict) or not isinstance(defaults, dict):
        raise ManifestError(f"{path}: no [tests.NAME] tables")
    out = []
    for name, spec in tests.items():
        if not isinstance(spec, dict):
            raise ManifestError(f"{path}: tests.{name} is not a table")
        merged: dict[str, Any] = {**defaults, **spec}
        unknown = set(merged) - KEYS
        if unknown:
            raise ManifestError(f"{path}: tests.{name}: unknown keys {', '.join(sorted(unknown))}")
        if "kernel" not in merged:
            raise ManifestError(f"{path}: tests.{name} has no kernel")
        out.append(_test(path, name, merged))
    return out


def _test(path: Path, name: str, m: dict[str, Any]) -> SuiteTest:
    base = path.parent
    try:
        t = SuiteTest(name, base / str(m["kernel"]), path, style=MANIFEST,
                      cpus=int(m.get("cpus", 1)), mem=m.get("mem"), append=str(m.get("append", "")),
                      initrd=base / str(m["initrd"]) if m.get("initrd") else None,
                      timeout=float(m.get("timeout", DEFAULT_TIMEOUT)),
                      groups=tuple(str(g) for g in m.get("groups", ())),
                      irqchip=str(m.get("irqchip", "kernel")), pit=m.get("pit"),
                      cpu_features=[f for f in str(m.get("cpu_features", "")).split(",") if f],
                      expect_status=int(m.get("expect_status", 0)),
                      expect_output=m.get("expect_output"))
        if t.expect_output is not None:
            re.compile(t.expect_output)
    except (TypeError, ValueError, re.error) as e:
        raise ManifestError(f"{path}: tests.{name}: {e}") from None
    if m.get("skip"):
        t.skip = str(m["skip"])
    elif not t.kernel.is_file():
        t.skip = f"kernel {t.kernel} not found (build it first)"
    return t

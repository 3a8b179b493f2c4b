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

import math
import re
import tomllib
from pathlib import Path
from typing import Any

from pyvmm.suite.files import read_config
from pyvmm.suite.model import DEFAULT_TIMEOUT, MANIFEST, SuiteTest, check_timeout
from pyvmm.x86.layout import MiB, parse_size

KEYS = {"kernel", "cpus", "mem", "append", "initrd", "timeout", "expect_status",
        "expect_output", "groups", "irqchip", "pit", "cpu_features", "skip"}
IRQCHIPS = ("kernel", "split", "none")
MAX_CPUS = 1024  # KVM's KVM_MAX_VCPUS on x86; the machine refuses what this host cannot give


class ManifestError(ValueError):
    """The manifest is not valid TOML or not in this format; the message says where."""


def parse(path: Path) -> list[SuiteTest]:
    text = read_config(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"{path}: {e}") from None
    except RecursionError:  # tomllib recurses once per level of nested arrays and tables
        raise ManifestError(f"{path}: arrays or tables nested too deeply") from None
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
        try:
            t = _test(path, name, merged)
        except (TypeError, ValueError, re.error) as e:
            raise ManifestError(f"{path}: tests.{name}: {e}") from None
        t.line = _line_of(text, name)
        out.append(t)
    return out


def _str(m: dict[str, Any], key: str, default: str = "") -> str:
    v = m.get(key, default)
    if not isinstance(v, str):
        raise TypeError(f"{key} must be a string, not {_shown(v)}")
    return v


def _int(m: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    v = m.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        raise ValueError(f"{key} must be a whole number from {low} to {high}, not {_shown(v)}")
    return v


def _shown(v: Any) -> str:
    text = repr(v) if isinstance(v, (str, int, float, bool)) else type(v).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _test(path: Path, name: str, m: dict[str, Any]) -> SuiteTest:
    """The entry's values, each checked for type and range: a value from a file is never
    used as whatever type it happens to have."""
    base = path.parent
    mem: str | None = None
    if "mem" in m:
        raw = m["mem"]
        if isinstance(raw, int) and not isinstance(raw, bool):
            raise TypeError(f"mem must be a size with its unit, such as \"{raw}M\" "
                            f"(did you mean \"{raw}M\"?), not {raw}")
        mem = _str(m, "mem")
        parse_size(mem, default_unit=MiB)  # "64Q" is refused here, naming the test
    timeout = m.get("timeout", DEFAULT_TIMEOUT)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
        raise TypeError(f"timeout must be a number of seconds, not {_shown(timeout)}")
    seconds = float(timeout) if isinstance(timeout, float) or abs(timeout) < 1 << 53 else math.inf
    groups = m.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise TypeError(f"groups must be a list of strings, not {_shown(groups)}")
    irqchip = _str(m, "irqchip", "kernel")
    if irqchip not in IRQCHIPS:
        raise ValueError(f"irqchip must be one of {', '.join(IRQCHIPS)}, not {_shown(irqchip)}")
    pit = m.get("pit")
    if pit is not None and not isinstance(pit, bool):
        raise TypeError(f"pit must be true or false, not {_shown(pit)}")
    kernel, initrd = _str(m, "kernel"), _str(m, "initrd")
    if not kernel:
        raise ValueError("kernel is empty")
    expect_output = _str(m, "expect_output") if "expect_output" in m else None
    t = SuiteTest(name, base / kernel, path, style=MANIFEST,
                  cpus=_int(m, "cpus", 1, 1, MAX_CPUS), mem=mem, append=_str(m, "append"),
                  initrd=base / initrd if initrd else None,
                  timeout=check_timeout(seconds), groups=tuple(groups),
                  irqchip=irqchip, pit=pit,
                  cpu_features=[f for f in _str(m, "cpu_features").split(",") if f],
                  expect_status=_int(m, "expect_status", 0, 0, 255),
                  expect_output=expect_output)
    if expect_output is not None:
        re.compile(expect_output)
    skip = _str(m, "skip")
    if skip:
        t.skip = skip
    elif not t.kernel.is_file():
        t.skip = f"kernel {t.kernel} not found (build it first)"
    return t


def _line_of(text: str, name: str) -> int:
    """The 0-based line of ``[tests.NAME]`` (bare or quoted key), 0 when it is not found
    (a dotted key or an inline table): where pytest reports the entry."""
    key = re.escape(name) if re.fullmatch(r"[A-Za-z0-9_-]+", name) else None
    quoted = re.escape(f'"{name}"') + "|" + re.escape(f"'{name}'")
    pattern = rf"^[ \t]*\[[ \t]*tests[ \t]*\.[ \t]*(?:{key + '|' if key else ''}{quoted})[ \t]*\]"
    m = re.search(pattern, text, re.M)
    return text.count("\n", 0, m.start()) if m else 0

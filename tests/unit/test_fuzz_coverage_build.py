"""`pyvmm guest build --coverage` (issue 21): the guest's own sources, CPL0 and user mode,
call the coverage hook in every block; the runtime does not; the map is in the image under
its symbol (what the host looks it up by); a guest built without it carries no map."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pyvmm.guest.toolchain import build

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("objdump") is None,
                                reason="gcc and binutils needed to build guests")

CPL0 = """#include <pyvmm/guest.h>
long user_part(long x);
int main(struct boot_info *bi, const char *cmdline)
{ (void)bi; return cmdline[0] ? 1 : (int)GUEST_USER_CALL(user_part, 2); }
"""
USER = """long user_part(long x) { return x > 1 ? x * 3 : x - 1; }
"""


def callers_of_hook(elf: Path) -> set[str]:
    """The functions whose code calls __sanitizer_cov_trace_pc."""
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(elf)], check=True,
                          capture_output=True, text=True).stdout
    callers, current = set(), ""
    for line in text.splitlines():
        if m := re.match(r"^[0-9a-f]+ <([^>]+)>:$", line):
            current = m.group(1)
        elif "call" in line and "<__sanitizer_cov_trace_pc>" in line:
            callers.add(current)
    return callers


def symbols(elf: Path) -> dict[str, tuple[int, int]]:
    from elftools.elf.elffile import ELFFile

    with open(elf, "rb") as f:
        tab = ELFFile(f).get_section_by_name(".symtab")
        return {s.name: (s["st_value"], s["st_size"]) for s in tab.iter_symbols()}


def test_coverage_instruments_the_guests_sources_and_not_the_runtime(tmp_path):
    (tmp_path / "g.c").write_text(CPL0)
    (tmp_path / "u.c").write_text(USER)
    elf = build([tmp_path / "g.c"], tmp_path / "g.elf", user_sources=[tmp_path / "u.c"],
                coverage=True)
    callers = callers_of_hook(elf)
    assert {"main", "user_part"} <= callers, callers
    assert not callers & {"vsnprintf", "guest_sync", "ucall", "guest_fuzz_input", "idt_install",
                          "__sanitizer_cov_trace_pc"}, callers
    syms = symbols(elf)
    addr, size = syms["__pyvmm_cov_map"]
    assert size == 65536 and addr % 4096 == 0
    assert "__pyvmm_cov_prev" in syms
    plain = build([tmp_path / "g.c"], tmp_path / "plain.elf", user_sources=[tmp_path / "u.c"])
    assert "__pyvmm_cov_map" not in symbols(plain) and not callers_of_hook(plain)
    assert "guest_fuzz_input" in symbols(plain)  # the input point is in every runtime

"""The guest toolchain's flag split (pure logic): CPL0 sources and the runtime keep
-mgeneral-regs-only; user-mode (CPL3) sources get a vector ISA instead (issue 20)."""

from __future__ import annotations

import pytest

from pyvmm.guest import toolchain


def test_user_flags_swap_the_cpl0_only_flags_for_the_isa():
    cpl0 = toolchain.cflags()
    user = toolchain.user_cflags()
    assert "-mgeneral-regs-only" in cpl0 and "-march=x86-64" in cpl0
    assert "-mgeneral-regs-only" not in user and "-march=x86-64" not in user
    assert "-march=native" in user
    # everything else is the same, in the same order
    assert [f for f in cpl0 if f not in toolchain.CPL0_ONLY] == \
        [f for f in user if not f.startswith("-march=")]


def test_another_isa_is_named_as_gcc_takes_it():
    assert "-march=x86-64-v3" in toolchain.user_cflags("x86-64-v3")


@pytest.mark.parametrize("isa", ["", "-O0", "native -mgeneral-regs-only", "x\n"])
def test_an_isa_that_is_not_one_name_is_refused(isa):
    with pytest.raises(toolchain.GuestBuildError, match="not an ISA name"):
        toolchain.user_cflags(isa)


def test_user_sources_that_do_not_exist_are_named(tmp_path):
    main = tmp_path / "main.c"
    main.write_text("int main(void) { return 0; }\n")
    with pytest.raises(toolchain.GuestBuildError, match=r"nope\.c: no such source file"):
        toolchain.build([main], tmp_path / "g.elf", user_sources=[tmp_path / "nope.c"],
                        library=tmp_path / "unused.a")

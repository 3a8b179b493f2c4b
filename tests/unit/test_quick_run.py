"""pyvmm.runargs reads ``pyvmm run GUEST [plain options]`` without click: wherever it
accepts a command line it must give exactly the parameters click gives ``run``, and it must
accept nothing click refuses (click reads those and says what is wrong)."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest

from pyvmm.cli import run
from pyvmm.runargs import RUN_DEFAULTS, quick_run_args


def click_params(args: list[str]) -> dict[str, object] | None:
    """What click makes of ``pyvmm run ARGS``: the parameters, or None where it refuses
    (an error, or --help, which ends the command before it runs)."""
    try:
        with run.make_context("run", list(args)) as ctx:
            return dict(ctx.params)
    except (click.exceptions.ClickException, click.exceptions.Exit):
        return None


@pytest.fixture
def guest(tmp_path: Path) -> str:
    path = tmp_path / "guest.elf"
    path.write_bytes(b"\x7fELF")
    return str(path)


def test_the_defaults_are_clicks(guest: str) -> None:
    """An option added to ``run`` fails here until pyvmm.runargs knows its default."""
    assert click_params([guest]) == {**RUN_DEFAULTS, "guest": guest}


#: command lines the quick reader takes: the bench's, and what the suite runner writes
ACCEPTED = [
    [],
    ["--timeout", "90"],
    ["--timeout=0.5", "--cpus", "2", "--mem", "128M", "--append", "smp", "--exit-code", "qemu"],
    ["--cpus=64", "--mem=0.5G", "--irqchip", "split", "--no-pit", "--cpu-features=+x2apic,-pcid"],
    ["--pit", "--strict-io", "--append", "-leading dash", "--irqchip=none"],
    ["--append=", "--cpu-features", "", "--mem", "64"],
    ["--cpus", " 2 ", "--timeout", "1e3"],
]


@pytest.mark.parametrize("options", ACCEPTED)
def test_what_it_accepts_is_what_click_gives(guest: str, options: list[str]) -> None:
    for args in ([guest, *options], [*options, guest]):  # the guest anywhere, as click takes it
        quick = quick_run_args(["run", *args])
        assert quick is not None, args
        assert quick == click_params(args), args


def test_an_initrd_is_a_path_as_click_checks_it(guest: str, tmp_path: Path) -> None:
    args = [guest, "--initrd", guest]
    assert quick_run_args(["run", *args]) == click_params(args)
    for bad in ([str(tmp_path), "--timeout", "1"], [guest, "--initrd", str(tmp_path)]):
        assert click_params(bad) is None
        assert quick_run_args(["run", *bad]) is None


#: command lines click refuses: the quick reader must leave every one to click
REFUSED = [
    ["--cpus", "0"], ["--cpus", "65"], ["--cpus", "two"], ["--timeout", "0"],
    ["--timeout", "-1"], ["--timeout", "nan"], ["--timeout", "inf"], ["--mem", "0"],
    ["--mem", "lots"], ["--irqchip", "KERNEL"], ["--exit-code", "Qemu"],
    ["--mem"], ["--bogus"], ["--help"], ["-h"], ["extra"], ["--pit=yes"],
]


@pytest.mark.parametrize("options", REFUSED)
def test_what_click_refuses_is_left_to_click(guest: str, options: list[str]) -> None:
    args = [guest, *options]
    assert click_params(args) is None, args
    assert quick_run_args(["run", *args]) is None, args


#: command lines click takes but the quick reader leaves to it (they are not plain)
LEFT = [["-v"], ["--verbose"], ["-s"], ["--gdb", ":1234"], ["--stats"], ["--format", "elf64"],
        ["--cpus", "2", "--cpus", "3"], ["--pit", "--no-pit"], ["--"], ["--trace", "t.json"],
        ["--kvm-trace"], ["--python-loop"]]


@pytest.mark.parametrize("options", LEFT)
def test_what_is_not_plain_is_left_to_click(guest: str, options: list[str]) -> None:
    assert quick_run_args(["run", guest, *options]) is None


def test_other_commands_and_shell_completion_are_clicks(guest: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert quick_run_args(["run"]) is None  # click's "give a GUEST" usage error
    assert quick_run_args(["info"]) is None
    assert quick_run_args(["--version"]) is None
    assert quick_run_args(["-v", "run", guest]) is None
    monkeypatch.setitem(os.environ, "_PYVMM_COMPLETE", "bash_complete")
    assert quick_run_args(["run", guest]) is None

"""The runtime binding: one door to ``pyvmm._native`` that refuses a stale extension, one
declaration of the C loop's structs (generated from runloop.h), one table of ioctl names."""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import pyvmm
from pyvmm.errors import ExitStatus
from pyvmm.kvm.errors import NativeBindingError
from pyvmm.kvm.ioctls import IOCTLS
from pyvmm.kvm.native import check_version, ffi, lib
from pyvmm.kvm.system import Kvm
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "pyvmm"
HEADER = ROOT / "cbindings" / "runloop.h"


def build_script() -> ModuleType:
    """cbindings/build_native.py, loaded as setuptools loads it (by path)."""
    spec = importlib.util.spec_from_file_location("build_native_under_test",
                                                  ROOT / "cbindings" / "build_native.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the extension's version ------------------------------------------------------------

def test_the_installed_extension_is_this_version() -> None:
    assert ffi.string(lib.pyvmm_native_version()).decode() == pyvmm.__version__


@pytest.mark.parametrize("built_for, says", [("0.1.0", "built for pyvmm 0.1.0"),
                                            (None, "built for an older pyvmm")])
def test_a_stale_extension_is_one_line_and_status_121(built_for: str | None, says: str) -> None:
    with pytest.raises(NativeBindingError) as info:
        check_version(built_for, "0.2.0")
    msg = str(info.value)
    assert "\n" not in msg and says in msg and "pyvmm 0.2.0" in msg and "reinstall" in msg
    assert info.value.status == ExitStatus.KVM_UNAVAILABLE == 121
    check_version("0.2.0", "0.2.0")  # the same version passes


def _package_with(tmp_path: Path, native: str | None) -> Path:
    """A copy of the installed package whose ``_native`` is the Python module ``native``
    (None: no extension at all), as a stale or missing build leaves it."""
    dest = tmp_path / "site"
    shutil.copytree(Path(pyvmm.__file__).parent, dest / "pyvmm",
                    ignore=shutil.ignore_patterns("_native*.so", "__pycache__", "*.elf", "lib"))
    if native is not None:
        (dest / "pyvmm" / "_native.py").write_text(native)
    return dest


STALE = '''
class ffi:
    string = staticmethod(lambda b: b)
class lib:
    pyvmm_native_version = staticmethod(lambda: b"0.0.1")
'''
UNVERSIONED = "class ffi: pass\nclass lib: pass\n"


@pytest.mark.parametrize("native, says", [(STALE, "built for pyvmm 0.0.1"),
                                          (UNVERSIONED, "built for an older pyvmm"),
                                          (None, "cannot load its C extension")])
def test_the_cli_refuses_a_stale_extension_in_one_line(tmp_path: Path, native: str | None,
                                                       says: str) -> None:
    """The command a user runs: one line naming the fix, status 121, no traceback; before
    the check, a stale extension was used as if it matched (an AttributeError, 125)."""
    site = _package_with(tmp_path, native)
    code = f"import sys; sys.path.insert(0, {str(site)!r}); from pyvmm.entry import main; main()"
    p = subprocess.run([sys.executable, "-P", "-c", code, "run", str(tmp_path / "no.elf")],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 121, p.stderr
    assert p.stderr.count("\n") == 1 and says in p.stderr and "reinstall" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


# --- one door ---------------------------------------------------------------------------

def _imports_native(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == "pyvmm._native" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom):
            if node.module == "pyvmm._native":
                return True
            if node.module == "pyvmm" and any(a.name == "_native" for a in node.names):
                return True
        if isinstance(node, ast.Constant) and node.value == "pyvmm._native":  # importlib
            return True
    return False


def test_only_kvm_native_imports_the_extension() -> None:
    doors = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                   if _imports_native(ast.parse(p.read_text(), str(p))))
    assert doors == ["kvm/native.py"], f"pyvmm._native imported outside kvm/native.py: {doors}"


def test_the_door_check_sees_every_form_of_import() -> None:
    for code in ("import pyvmm._native", "from pyvmm._native import lib",
                 "from pyvmm import _native", "importlib.import_module('pyvmm._native')"):
        assert _imports_native(ast.parse(code)), code
    assert not _imports_native(ast.parse("from pyvmm.kvm.native import lib"))


# --- struct pyvmm_loop: declared once --------------------------------------------------

def _struct_fields(text: str, name: str) -> list[str]:
    """The field names of ``struct name { ... };`` in C text (comments dropped)."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    body = re.search(rf"struct {name} \{{(.*?)\n\}};", text, re.S)
    assert body is not None, name
    decls = [d.strip() for d in body.group(1).split(";") if d.strip() and d.strip() != "..."]
    return [re.sub(r"\[.*", "", d).split()[-1].lstrip("*") for d in decls]


STRUCTS = ("pyvmm_loop", "pyvmm_fast_entry", "pyvmm_trace_rec")


def test_the_loop_structs_are_declared_once_in_the_header() -> None:
    script_text = (ROOT / "cbindings" / "build_native.py").read_text()
    cdef = build_script()._cdef()
    for name in STRUCTS:
        assert f"struct {name} {{" not in script_text, f"struct {name} written in build_native.py"
        assert cdef.count(f"struct {name} {{") == 1, name


@pytest.mark.parametrize("name", STRUCTS)
def test_the_compiled_structs_are_the_headers(name: str) -> None:
    """The extension's view of each struct has the header's fields in the header's order
    (less the one hidden from cffi) and the C layout (cffi took it from the compiler)."""
    header = HEADER.read_text()
    hidden = {"thread"} if name == "pyvmm_loop" else set()
    fields = [f for f in _struct_fields(header, name) if f not in hidden]
    compiled = ffi.typeof(f"struct {name}").fields
    assert [f for f, _ in compiled] == fields
    offsets = [t.offset for _, t in compiled]
    assert offsets == sorted(offsets)


def test_header_cdef_hides_marked_lines_and_makes_structs_partial() -> None:
    text = ("#include <x.h>\n/* cdef-begin: why */\n#define A 1\nstruct s {\n    int a;\n"
            "    pthread_t t; /* not in cdef */\n};\nint f(struct s *p);\n/* cdef-end */\n")
    out = build_script().header_cdef(text)
    assert "pthread_t" not in out and "#include" not in out
    assert "struct s {\n    int a;\n    ...;\n};" in out and "int f(struct s *p);" in out


# --- ioctl names: written once ------------------------------------------------------------

WRAPPERS = {"system.py": Kvm, "vm.py": Vm, "vcpu.py": Vcpu}


@pytest.mark.parametrize("module", sorted(WRAPPERS))
def test_every_wrapper_names_an_ioctl_of_its_own_table_once(module: str) -> None:
    cls = WRAPPERS[module]
    table = {n for n, _ in IOCTLS[cls.KIND]}
    tree = ast.parse((SRC / "kvm" / module).read_text())
    used = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("_ioctl", "_ioctl_val", "_msr_list") and node.args
                and isinstance(node.args[0], ast.Constant)):
            used.add(node.args[0].value)
        # the number beside the name (lib.KVM_GET_REGS) is the name typed a second time
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "lib":
            assert node.attr not in table, f"{module}: lib.{node.attr} beside its name"
    assert used and used <= table, used - table
    assert {n: int(getattr(lib, n)) for n in table} == cls.REQUESTS


def test_an_ioctl_outside_the_table_is_a_bug_not_a_request() -> None:
    vm = Vm.__new__(Vm)
    vm.fd = 0
    with pytest.raises(KeyError):
        vm._ioctl("KVM_GET_REGS")  # a vCPU ioctl: never sent to a VM fd

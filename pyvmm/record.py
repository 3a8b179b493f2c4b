"""Plain value classes: what ``@dataclass`` gave the classes on ``pyvmm run``'s path
(``==``, ``repr``, and for frozen ones ``hash`` and no assignment), without its cost.

``import dataclasses`` imports ``inspect`` (and with it ``ast``, ``dis``, ``tokenize``),
and every ``@dataclass`` generates and compiles its methods when its module is imported:
about 1 ms a class on a loaded host, a sixth of a small guest's whole run (bench/run.py,
row 3).  A class here lists its fields in ``_fields`` and writes its ``__init__`` (so that
mypy checks every constructor call as it did); the methods below read ``_fields`` at call
time, and nothing runs at import.
"""

from __future__ import annotations

# not typing.TYPE_CHECKING: importing typing is what this module's users avoid (mypy
# knows the name)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar


class _Fields:
    """``==`` field by field between instances of the same class and a ``repr`` naming
    each field.  ``_fields``: the fields, in order; ``_no_compare`` and ``_no_repr``: fields
    left out of ``==`` (and ``hash``) and of ``repr`` (dataclasses' ``compare=False`` and
    ``repr=False``)."""

    _fields: ClassVar[tuple[str, ...]] = ()
    _no_compare: ClassVar[tuple[str, ...]] = ()
    _no_repr: ClassVar[tuple[str, ...]] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, f) for f in self._fields if f not in self._no_compare)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, _Fields)
        return self._values() == other._values()

    def __repr__(self) -> str:
        return fields_repr(self, [f for f in self._fields if f not in self._no_repr])


def fields_repr(obj: object, fields: list[str]) -> str:
    """``Class(field=value, ...)``, as a dataclass's ``repr``."""
    shown = (f"{f}={getattr(obj, f)!r}" for f in fields)
    return f"{type(obj).__qualname__}({', '.join(shown)})"


class Record(_Fields):
    """Unhashable, as ``@dataclass`` (``eq=True``, not frozen)."""

    __hash__ = None  # type: ignore[assignment]


class FrozenRecord(_Fields):
    """Fields set once, by :meth:`_set` in ``__init__``, and hashable by them (as
    ``@dataclass(frozen=True)``)."""

    def _set(self, **values: object) -> None:
        self.__dict__.update(values)  # past __setattr__, in one call (ELF sections: dozens a load)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a frozen "
                             f"{type(self).__qualname__}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a frozen "
                             f"{type(self).__qualname__}")

    def __hash__(self) -> int:
        return hash(self._values())

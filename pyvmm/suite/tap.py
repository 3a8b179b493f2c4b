"""TAP version 13 for a suite run: one test point per suite entry, and before it, as an
indented subtest, one point per report line the kernel printed (``PASS:`` ok, ``FAIL:``
not ok, ``SKIP:`` ok with a SKIP directive, ``XFAIL:`` not ok with a TODO directive).
A failing entry carries a YAML block with its failure message; the plan comes last, as
TAP allows, so that points stream out as tests finish.
"""

from __future__ import annotations

import json
from typing import Protocol

from pyvmm.suite.model import Verdict


class Stream(Protocol):
    def write(self, text: str, /) -> object: ...
    def flush(self) -> None: ...


def _desc(text: str) -> str:
    # '#' starts a directive and a newline ends the point: neither may appear in a description
    return " ".join(text.replace("\\", "\\\\").replace("#", "\\#").split())


def _line_point(n: int, line: str) -> str:
    tag, _, rest = line.partition(": ")
    if tag == "PASS":
        return f"ok {n} - {_desc(rest)}"
    if tag == "SKIP":
        return f"ok {n} - {_desc(rest)} # SKIP"
    if tag == "XFAIL":
        return f"not ok {n} - {_desc(rest)} # TODO expected failure"
    if tag == "XPASS":
        return f"not ok {n} - {_desc(rest)} (unexpectedly passed)"
    return f"not ok {n} - {_desc(rest)}"


class TapWriter:
    """Writes points as :meth:`add` is called; :meth:`close` writes the plan."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.count = 0
        stream.write("TAP version 13\n")
        stream.flush()

    def add(self, name: str, verdict: Verdict, reason: str = "", lines: list[str] | None = None,
            duration: float | None = None) -> None:
        self.count += 1
        out = []
        if lines:
            out.append(f"    # Subtest: {_desc(name)}")
            out += [f"    {_line_point(i, line)}" for i, line in enumerate(lines, 1)]
            out.append(f"    1..{len(lines)}")
        if verdict == Verdict.PASS:
            out.append(f"ok {self.count} - {_desc(name)}")
        elif verdict == Verdict.SKIP:
            out.append(f"ok {self.count} - {_desc(name)} # SKIP {_desc(reason)}")
        else:
            out.append(f"not ok {self.count} - {_desc(name)}")
            out += ["  ---", f"  message: {json.dumps(reason)}", "  severity: fail"]
            if duration is not None:
                out.append(f"  duration_ms: {duration * 1000:.1f}")
            out.append("  ...")
        self.stream.write("\n".join(out) + "\n")
        self.stream.flush()

    def close(self, bail: str | None = None) -> None:
        if bail:
            self.stream.write(f"Bail out! {_desc(bail)}\n")
        self.stream.write(f"1..{self.count}\n")
        self.stream.flush()

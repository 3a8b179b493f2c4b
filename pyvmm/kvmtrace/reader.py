"""The binary per-CPU ring buffers (``per_cpu/cpuN/trace_pipe_raw``): copied out by a
background thread while the guest runs, decoded only after the run.

Why binary and not the text ``trace_pipe``: the kernel formats no text (a 100,000-exit run
makes about half a million KVM events), the copy is one ``read`` per 4 KiB page, and every
field is then decoded by the event's own ``format`` file.  The thread holds the GIL only
for those reads, so vCPU threads answering exits in Python are not slowed by the capture;
decoding happens when someone first looks at the records.

A page is ``header_page``'s timestamp and commit count, then events, each a 32-bit header
(``type_len`` 5 bits, ``time_delta`` 27 bits) as ``header_event`` describes.  Pages come
from the kernel, but this module trusts none of their counts: a length that runs past the
page ends that page's decoding.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

from pyvmm.kvmtrace.format import PageLayout

#: commit-field flags: the kernel lost events before this page (and stored how many)
MISSED_EVENTS = 1 << 31
MISSED_STORED = 1 << 30
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
#: how often the thread empties the buffers (a page holds ~100 KVM events; at 8 us per
#: exit and ~5 events per exit a 4 MiB per-CPU buffer lasts ~0.8 s)
POLL_INTERVAL = 0.01


def iter_page(page: bytes, layout: PageLayout) -> tuple[list[tuple[int, memoryview]], int]:
    """The events of one page as (timestamp ns, record bytes), and how many events the
    kernel said it lost before the page (-1: some, count unknown)."""
    if len(page) < layout.data_offset:
        return [], 0
    ts = _U64.unpack_from(page, layout.ts_offset)[0]
    commit = int.from_bytes(page[layout.commit_offset:layout.commit_offset + layout.commit_size],
                            "little")
    size = commit & (MISSED_STORED - 1)
    data = memoryview(page)[layout.data_offset:]
    size = min(size, len(data))
    missed = 0
    if commit & MISSED_EVENTS:
        missed = -1
        if commit & MISSED_STORED and size + 8 <= len(data):
            missed = _U64.unpack_from(data, size)[0] or -1
    out: list[tuple[int, memoryview]] = []
    pos = 0
    while pos + 4 <= size:
        hdr = _U32.unpack_from(data, pos)[0]
        type_len, delta = hdr & 0x1F, hdr >> 5
        if type_len == layout.padding:
            if delta == 0 or pos + 8 > size:
                break  # the rest of the page is empty
            ts += delta
            pos += 4 + _U32.unpack_from(data, pos + 4)[0]
            continue
        if type_len == layout.time_extend:
            if pos + 8 > size:
                break
            ts += (_U32.unpack_from(data, pos + 4)[0] << 27) | delta
            pos += 8
            continue
        if type_len == layout.time_stamp:
            if pos + 8 > size:
                break
            absolute = (_U32.unpack_from(data, pos + 4)[0] << 27) | delta
            ts = (ts & ~((1 << 59) - 1)) | (absolute & ((1 << 59) - 1))
            pos += 8
            continue
        if type_len == 0:
            if pos + 8 > size:
                break
            length = _U32.unpack_from(data, pos + 4)[0]
            start, end = pos + 8, pos + 4 + length
            if length < 4 or end > size:
                break
        else:
            start, end = pos + 4, pos + 4 + type_len * 4
            if end > size:
                break
        ts += delta
        out.append((ts, data[start:end]))
        pos = end
    return out, missed


def page_size(instance: Path) -> int:
    """The bytes one ``trace_pipe_raw`` read returns at most: a sub-buffer."""
    try:
        return int((instance / "buffer_subbuf_size_kb").read_text().strip()) * 1024
    except (OSError, ValueError):
        return os.sysconf("SC_PAGESIZE")


def online_cpus(instance: Path) -> list[int]:
    """The CPUs that have a buffer in this instance."""
    cpus = []
    for entry in (instance / "per_cpu").iterdir():
        if entry.name.startswith("cpu") and entry.name[3:].isdigit():
            cpus.append(int(entry.name[3:]))
    return sorted(cpus)


class RawReader:
    """Copies every CPU's pages out of the instance on a thread until :meth:`stop`;
    :attr:`pages` holds (cpu, page bytes) in the order they were read."""

    def __init__(self, instance: Path) -> None:
        self.size = page_size(instance)
        self.pages: list[tuple[int, bytes]] = []
        self.bytes = 0
        #: CPUs whose buffer could not be read, and why
        self.failed: dict[int, str] = {}
        self._fds: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            for cpu in online_cpus(instance):
                path = instance / "per_cpu" / f"cpu{cpu}" / "trace_pipe_raw"
                self._fds.append((cpu, os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)))
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pyvmm-kvmtrace", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        for cpu, fd in self._fds:
            if cpu in self.failed:
                continue
            while True:
                try:
                    page = os.read(fd, self.size)
                except OSError as e:
                    if e.errno in (errno.EAGAIN, errno.EINTR):
                        break
                    # a CPU gone offline, a kernel refusing: that CPU's events are lost,
                    # said by the capture (never a thread's traceback)
                    self.failed[cpu] = e.strerror or str(e)
                    break
                if not page:
                    break
                self.pages.append((cpu, page))
                self.bytes += len(page)

    def _run(self) -> None:
        while not self._stop.wait(POLL_INTERVAL):
            self._drain()

    def stop(self) -> None:
        """End the thread and copy out what is left (tracing must be off by now)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._fds:
            self._drain()

    def close(self) -> None:
        for _, fd in self._fds:
            os.close(fd)
        self._fds = []


def iter_pages(pages: list[tuple[int, bytes]], layout: PageLayout
               ) -> Iterator[tuple[int, int, memoryview]]:
    """(cpu, timestamp, record) for every event of ``pages``, per CPU in order."""
    for cpu, page in pages:
        events, _ = iter_page(page, layout)
        for ts, rec in events:
            yield cpu, ts, rec

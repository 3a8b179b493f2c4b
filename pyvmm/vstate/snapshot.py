"""Deprecated home of snapshots: they are a machine service, :mod:`pyvmm.snapshot` now
(the snapshot's data and its file: :mod:`pyvmm.snapshot_file`).  Kept so that code
importing ``pyvmm.vstate.snapshot`` goes on working."""

from pyvmm.snapshot import (
    HEADER,
    MAGIC,
    Snapshot,
    SnapshotError,
    VcpuState,
    host_identity,
    load,
    restore,
    save,
    set_vcpu_state,
    set_vm_state,
    take,
)

__all__ = ["HEADER", "MAGIC", "Snapshot", "SnapshotError", "VcpuState", "host_identity", "load",
           "restore", "save", "set_vcpu_state", "set_vm_state", "take"]

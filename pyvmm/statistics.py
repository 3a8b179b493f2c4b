"""KVM's binary statistics of one machine (``Machine.stats``, each run's
``RunResult.stats``): the VM's and every vCPU's stats fd, opened on first use, so that
machines driven by hand do not pay for them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:  # pyvmm.kvm.stats loads with the first read (a run without --stats never)
    from pyvmm.kvm.stats import StatDesc, StatsReader, StatValue
    from pyvmm.kvm.vcpu import Vcpu
    from pyvmm.kvm.vm import Vm


class MachineStats:
    def __init__(self) -> None:
        self._readers: list[tuple[str, StatsReader]] = []

    def read(self, vm: Vm, vcpus: Sequence[Vcpu]) -> dict[str, dict[str, StatValue]]:
        """``{"vm": {...}, "vcpu0": {...}, ...}`` now."""
        if not self._readers:
            self._readers.append(("vm", vm.get_stats_fd()))
            self._readers += [(f"vcpu{v.id}", v.get_stats_fd()) for v in vcpus]
        return {name: r.read() for name, r in self._readers}

    def descriptors(self, scope: str) -> Mapping[str, StatDesc]:
        """What the stats of ``scope`` ("vm", "vcpu0", ...) are (units, kinds); empty before
        the first read."""
        return next((r.descriptors for name, r in self._readers if name == scope), {})

    def close(self) -> None:
        for _, reader in self._readers:
            reader.close()
        self._readers.clear()

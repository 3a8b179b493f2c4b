"""pyvmm: a userspace virtual machine monitor in Python over /dev/kvm.

``Machine`` is the embedding API; ``pyvmm.kvm`` holds the raw ioctl wrappers.
"""

from pyvmm.devices.bus import Space
from pyvmm.kvm.errors import KvmError
from pyvmm.loader.elf import GuestImageError
from pyvmm.machine import Machine, RunResult

__version__ = "0.1.0"
__all__ = ["GuestImageError", "KvmError", "Machine", "RunResult", "Space", "__version__"]

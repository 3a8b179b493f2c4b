# Type stub for the cffi extension built from cbindings/ (build_native.py).  cffi objects
# carry no static types: the kvm layer wraps them in typed methods.  Only
# pyvmm/kvm/native.py imports this module (it checks the extension's version first).
from typing import Any

ffi: Any
lib: Any

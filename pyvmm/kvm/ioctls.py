"""The ioctls pyvmm issues, by the fd they go to: the one table of their names.

Grouped as the KVM API document groups them (section 4), each with the capability that
must be present for it (None: part of the stable API).  Both sides read this table: the
build script (cbindings/build_native.py, which loads this file by path) asks the C
compiler for each number from ``<linux/kvm.h>``, and the wrappers (``Kvm``, ``Vm``,
``Vcpu``: :attr:`pyvmm.kvm.fd.FdObject.KIND`) issue an ioctl by its name alone, its number
looked up here.  Pure data, no imports: the build runs before the extension exists.
"""

IOCTLS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "system": (
        ("KVM_GET_API_VERSION", None), ("KVM_CREATE_VM", None), ("KVM_CHECK_EXTENSION", None),
        ("KVM_GET_VCPU_MMAP_SIZE", None), ("KVM_GET_SUPPORTED_CPUID", "KVM_CAP_EXT_CPUID"),
        ("KVM_GET_MSR_INDEX_LIST", None),
        ("KVM_GET_MSR_FEATURE_INDEX_LIST", "KVM_CAP_GET_MSR_FEATURES"),
    ),
    "vm": (
        ("KVM_CHECK_EXTENSION", "KVM_CAP_CHECK_EXTENSION_VM"), ("KVM_ENABLE_CAP", None),
        ("KVM_SET_TSS_ADDR", "KVM_CAP_SET_TSS_ADDR"),
        ("KVM_SET_IDENTITY_MAP_ADDR", "KVM_CAP_SET_IDENTITY_MAP_ADDR"),
        ("KVM_SET_USER_MEMORY_REGION", "KVM_CAP_USER_MEMORY"), ("KVM_GET_DIRTY_LOG", None),
        ("KVM_CREATE_IRQCHIP", "KVM_CAP_IRQCHIP"), ("KVM_GET_IRQCHIP", "KVM_CAP_IRQCHIP"),
        ("KVM_SET_IRQCHIP", "KVM_CAP_IRQCHIP"), ("KVM_IRQ_LINE", "KVM_CAP_IRQCHIP"),
        ("KVM_IRQ_LINE_STATUS", "KVM_CAP_IRQ_INJECT_STATUS"), ("KVM_CREATE_PIT2", "KVM_CAP_PIT2"),
        ("KVM_IOEVENTFD", "KVM_CAP_IOEVENTFD"), ("KVM_IRQFD", "KVM_CAP_IRQFD"),
        ("KVM_SIGNAL_MSI", "KVM_CAP_SIGNAL_MSI"),
        ("KVM_REGISTER_COALESCED_MMIO", "KVM_CAP_COALESCED_MMIO"),
        ("KVM_UNREGISTER_COALESCED_MMIO", "KVM_CAP_COALESCED_MMIO"),
        ("KVM_X86_SET_MSR_FILTER", "KVM_CAP_X86_MSR_FILTER"),
        ("KVM_GET_PIT2", "KVM_CAP_PIT_STATE2"), ("KVM_SET_PIT2", "KVM_CAP_PIT_STATE2"),
        ("KVM_SET_GSI_ROUTING", "KVM_CAP_IRQ_ROUTING"),
        ("KVM_GET_STATS_FD", "KVM_CAP_BINARY_STATS_FD"), ("KVM_CREATE_VCPU", None),
        ("KVM_GET_CLOCK", "KVM_CAP_ADJUST_CLOCK"), ("KVM_SET_CLOCK", "KVM_CAP_ADJUST_CLOCK"),
    ),
    "vcpu": (
        ("KVM_RUN", None), ("KVM_GET_REGS", None), ("KVM_SET_REGS", None),
        ("KVM_GET_SREGS", None), ("KVM_SET_SREGS", None), ("KVM_GET_FPU", None),
        ("KVM_SET_FPU", None), ("KVM_GET_MSRS", None), ("KVM_SET_MSRS", None),
        ("KVM_SET_CPUID2", "KVM_CAP_EXT_CPUID"), ("KVM_GET_CPUID2", "KVM_CAP_EXT_CPUID"),
        ("KVM_GET_LAPIC", "KVM_CAP_IRQCHIP"), ("KVM_SET_LAPIC", "KVM_CAP_IRQCHIP"),
        ("KVM_GET_MP_STATE", "KVM_CAP_MP_STATE"), ("KVM_SET_MP_STATE", "KVM_CAP_MP_STATE"),
        ("KVM_GET_VCPU_EVENTS", "KVM_CAP_VCPU_EVENTS"),
        ("KVM_SET_VCPU_EVENTS", "KVM_CAP_VCPU_EVENTS"), ("KVM_GET_XSAVE", "KVM_CAP_XSAVE"),
        ("KVM_GET_XSAVE2", "KVM_CAP_XSAVE2"), ("KVM_SET_XSAVE", "KVM_CAP_XSAVE"),
        ("KVM_GET_XCRS", "KVM_CAP_XCRS"), ("KVM_SET_XCRS", "KVM_CAP_XCRS"),
        ("KVM_SET_GUEST_DEBUG", "KVM_CAP_SET_GUEST_DEBUG"), ("KVM_GET_TSC_KHZ", "KVM_CAP_GET_TSC_KHZ"),
        ("KVM_TRANSLATE", None), ("KVM_GET_STATS_FD", "KVM_CAP_BINARY_STATS_FD"),
        ("KVM_GET_DEBUGREGS", "KVM_CAP_DEBUGREGS"), ("KVM_SET_DEBUGREGS", "KVM_CAP_DEBUGREGS"),
    ),
}

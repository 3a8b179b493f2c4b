/* boot.c - from the three boot entries (pyvmm's ELF64 convention, PVH, multiboot v1) to
 * main(), and exit() through the debug-exit port. */
#include <pyvmm/rt.h>
#include <pyvmm/user.h>

struct boot_info *boot_info;

__attribute__((noreturn)) void exit(uint32_t code)
{
	if (guest_user_syscalls()) /* user mode: the runtime does the port write */
		guest_syscall(GUEST_SYS_EXIT, code, 0, 0);
	outl(PORT_DEBUG_EXIT, code);
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* PVH start info (xen/include/public/arch-x86/hvm/start_info.h) */
struct hvm_start_info {
	uint32_t magic, version, flags, nr_modules;
	uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
	uint32_t memmap_entries, reserved;
};
struct hvm_memmap_entry {
	uint64_t addr, size;
	uint32_t type, reserved;
};
#define HVM_START_MAGIC 0x336ec578u

static struct boot_info pvh_boot_info;

/* Entered from pvh_start32: turn the PVH start info into pyvmm's boot info. */
void rt_start_pvh(struct hvm_start_info *si)
{
	struct boot_info *bi = &pvh_boot_info;
	bi->magic = BOOT_MAGIC;
	bi->version = 1;
	bi->ncpus = 1;
	if (si && si->magic == HVM_START_MAGIC) {
		bi->cmdline_addr = si->cmdline_paddr;
		if (si->version >= 1) {
			struct hvm_memmap_entry *e = (struct hvm_memmap_entry *)si->memmap_paddr;
			for (uint32_t i = 0; i < si->memmap_entries; i++)
				if (e[i].type == 1)
					bi->ram_size += e[i].size;
		}
	}
	rt_start(bi);
}

/* Multiboot v1 information (multiboot spec 0.6.96, "Boot information format") */
struct mb_info {
	uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
	uint32_t syms[4], mmap_length, mmap_addr;
};
struct mb_module { uint32_t start, end, string, reserved; };
const char *mb_argv0 = "";
const void *mb_module_start;
uint64_t mb_module_size;
static struct boot_info mb_boot_info;

/* Entered from mb_start32: the VMM's number of CPUs comes from fw_cfg (QEMU's interface). */
void rt_start_multiboot(struct mb_info *mbi, uint32_t magic)
{
	struct boot_info *bi = &mb_boot_info;
	bi->magic = BOOT_MAGIC;
	bi->version = 1;
	bi->ncpus = 1;
	/* a BIOS leaves IRQ 0 unmasked with the PIT running: with interrupts enabled it would
	 * arrive as vector 8, the double fault's, so mask both PICs as kernels do at start */
	outb(0x21, 0xff);
	outb(0xa1, 0xff);
	if (magic != 0x2BADB002u) {
		printf("multiboot: bad magic %x\n", magic);
		exit(0x7d);
	}
	if (mbi->flags & 1)
		bi->ram_size = ((uint64_t)mbi->mem_upper + 1024) * 1024;
	const char *cmd = (mbi->flags & 4) ? (const char *)(uint64_t)mbi->cmdline : "";
	mb_argv0 = cmd;
	cmd = skip_word(cmd); /* QEMU and pyvmm put the kernel's path first, as argv[0] */
	bi->cmdline_addr = (uint64_t)cmd;
	bi->cmdline_len = (uint32_t)strlen(cmd);
	if ((mbi->flags & 8) && mbi->mods_count) {
		struct mb_module *m = (struct mb_module *)(uint64_t)mbi->mods_addr;
		mb_module_start = (const void *)(uint64_t)m->start;
		mb_module_size = m->end - m->start;
	}
	outw(0x510, 0); /* fw_cfg signature, then the CPU count */
	if (inb(0x511) == 'Q' && inb(0x511) == 'E' && inb(0x511) == 'M' && inb(0x511) == 'U') {
		outw(0x510, 5);
		bi->ncpus = inb(0x511) | (uint32_t)inb(0x511) << 8;
	}
	rt_start(bi);
}

void rt_start(struct boot_info *bi)
{
	/* no bss clearing: the loader zero-fills p_memsz beyond p_filesz, and a byte loop
	 * would cost ~1 us per byte where CPL0 code is emulated (HOST-KVM.md) */
	boot_info = bi;
	const char *cmdline = "";
	if (bi && bi->magic == BOOT_MAGIC && bi->cmdline_addr)
		cmdline = (const char *)bi->cmdline_addr;
	exit((uint32_t)main(bi, cmdline));
}

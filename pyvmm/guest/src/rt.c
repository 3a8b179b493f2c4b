/* rt.c - serial output (polled 16550), printf, exit through the debug-exit port. */
#include <pyvmm/rt.h>

struct boot_info *boot_info;
static volatile uint32_t print_lock;

void putc(char c)
{
	while (!(inb(PORT_COM1 + 5) & 0x20)) /* LSR.THRE */
		cpu_relax();
	outb(PORT_COM1, (uint8_t)c);
}

static void lock(void)
{
	while (__atomic_exchange_n(&print_lock, 1, __ATOMIC_ACQUIRE))
		cpu_relax();
}

static void unlock(void) { __atomic_store_n(&print_lock, 0, __ATOMIC_RELEASE); }

/* C's puts: the string, then a newline, as one line (no other vCPU's output in between) */
int puts(const char *s)
{
	lock();
	while (*s)
		putc(*s++);
	putc('\n');
	unlock();
	return 1;
}

__attribute__((noreturn)) void exit(uint32_t code)
{
	outl(PORT_DEBUG_EXIT, code);
	for (;;)
		__asm__ volatile("cli; hlt");
}

void *memset(void *d, int c, size_t n)
{
	unsigned char *p = d;
	while (n--)
		*p++ = (unsigned char)c;
	return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
	unsigned char *p = d;
	const unsigned char *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *p = a, *q = b;
	for (; n; n--, p++, q++)
		if (*p != *q)
			return *p - *q;
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

int strcmp(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return (unsigned char)*a - (unsigned char)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
	for (; n; n--, a++, b++)
		if (*a != *b || !*a)
			return (unsigned char)*a - (unsigned char)*b;
	return 0;
}

void sort_u64(uint64_t *v, unsigned n)
{
	for (unsigned i = 1; i < n; i++) /* insertion sort: n is small, code stays tiny */
		for (unsigned j = i; j && v[j - 1] > v[j]; j--) {
			uint64_t t = v[j];
			v[j] = v[j - 1];
			v[j - 1] = t;
		}
}

const char *skip_word(const char *s)
{
	while (*s && *s != ' ')
		s++;
	while (*s == ' ')
		s++;
	return s;
}

uint64_t parse_u64(const char *s)
{
	uint64_t v = 0;
	unsigned base = 10;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
		base = 16, s += 2;
	for (;; s++) {
		unsigned d;
		if (*s >= '0' && *s <= '9')
			d = *s - '0';
		else if (base == 16 && *s >= 'a' && *s <= 'f')
			d = *s - 'a' + 10;
		else if (base == 16 && *s >= 'A' && *s <= 'F')
			d = *s - 'A' + 10;
		else
			break;
		v = v * base + d;
	}
	return v;
}

/* One formatter, two sinks: the serial port (printf) and a buffer (vsnprintf). */
struct sink {
	void (*put)(struct sink *, char);
	char *buf;
	size_t len, cap;
};

static void put_serial(struct sink *s, char c) { (void)s; putc(c); }

static void put_buf(struct sink *s, char c)
{
	if (s->len + 1 < s->cap)
		s->buf[s->len] = c;
	s->len++;
}

static void put_num(struct sink *o, uint64_t v, unsigned base, int width, char pad, int neg)
{
	char buf[24];
	int n = 0;
	do {
		unsigned d = v % base;
		buf[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
		v /= base;
	} while (v);
	if (neg)
		buf[n++] = '-';
	while (n < width--)
		o->put(o, pad);
	while (n)
		o->put(o, buf[--n]);
}

static void format(struct sink *o, const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			o->put(o, *fmt);
			continue;
		}
		fmt++;
		char pad = ' ';
		int width = 0, lng = 0;
		if (*fmt == '0')
			pad = '0', fmt++;
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l')
			lng++, fmt++;
		switch (*fmt) {
		case 'd': case 'i': {
			int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
			put_num(o, v < 0 ? -(uint64_t)v : (uint64_t)v, 10, width, pad, v < 0);
			break;
		}
		case 'u':
			put_num(o, lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10, width, pad, 0);
			break;
		case 'x':
			put_num(o, lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16, width, pad, 0);
			break;
		case 'p':
			o->put(o, '0'), o->put(o, 'x');
			put_num(o, (uint64_t)va_arg(ap, void *), 16, width, pad, 0);
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			while (s && *s)
				o->put(o, *s++);
			break;
		}
		case 'c':
			o->put(o, (char)va_arg(ap, int));
			break;
		default:
			o->put(o, '%');
			o->put(o, *fmt);
		}
	}
}

int vprintf(const char *fmt, va_list ap)
{
	struct sink o = { .put = put_serial };
	lock();
	format(&o, fmt, ap);
	unlock();
	return 0;
}

int vsnprintf(char *buf, size_t cap, const char *fmt, va_list ap)
{
	struct sink o = { .put = put_buf, .buf = buf, .cap = cap };
	format(&o, fmt, ap);
	if (cap)
		buf[o.len < cap ? o.len : cap - 1] = 0;
	return (int)o.len;
}

int printf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	return 0;
}

/* ---- SMP start-up ---- */
extern char ap_trampoline[];
extern volatile uint32_t ap_cr3;
volatile uint32_t ap_started;

__attribute__((weak)) void ap_main(uint32_t index)
{
	(void)index;
	__atomic_add_fetch(&ap_started, 1, __ATOMIC_SEQ_CST);
	for (;;)
		__asm__ volatile("cli; hlt");
}

extern char __ap_tramp_lma[], __ap_tramp_size[];

unsigned smp_start_aps(unsigned expected)
{
	/* .flat builds load the trampoline above 1 MiB: put it where SIPI can start it */
	if ((uintptr_t)__ap_tramp_lma != (uintptr_t)ap_trampoline)
		memcpy(ap_trampoline, __ap_tramp_lma, (size_t)__ap_tramp_size);
	uint64_t cr3;
	__asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
	ap_cr3 = (uint32_t)cr3; /* the VMM keeps its page tables below 4 GiB */
	mmio_write32(LAPIC_BASE + 0xF0, 0x1FF);         /* SVR: APIC software-enabled */
	mmio_write32(LAPIC_BASE + 0x310, 0);
	mmio_write32(LAPIC_BASE + 0x300, 0x000C4500);   /* INIT, all excluding self */
	uint32_t vector = (uint32_t)((uint64_t)ap_trampoline >> 12);
	mmio_write32(LAPIC_BASE + 0x300, 0x000C4600 | vector); /* SIPI */
	for (unsigned spins = 0; spins < 200000 && ap_started < expected; spins++)
		cpu_relax();
	return ap_started;
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

/* rt.h - pyvmm's freestanding guest runtime: boot info, port I/O, serial, exit. */
#ifndef PYVMM_RT_H
#define PYVMM_RT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* The boot-info block the VMM passes in RDI (README, "Guest entry convention"). */
struct boot_mmap_entry {
	uint64_t base, length;
	uint32_t type, reserved;
};
struct boot_info {
	uint32_t magic, version;
	uint64_t ram_size;
	uint64_t mmap_addr;
	uint32_t mmap_count, ncpus;
	uint64_t cmdline_addr;
	uint32_t cmdline_len, reserved;
	uint64_t stack_base, stack_size;
	uint64_t vmm_base, vmm_size;
};
#define BOOT_MAGIC 0x4D565950u

#define PORT_DEBUG_EXIT 0xf4
#define PORT_COM1 0x3f8
#define LAPIC_BASE 0xFEE00000ul

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint64_t rdtsc(void) { uint32_t lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((uint64_t)hi << 32) | lo; }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline uint32_t mmio_read32(uint64_t a) { return *(volatile uint32_t *)a; }
static inline void mmio_write32(uint64_t a, uint32_t v) { *(volatile uint32_t *)a = v; }

extern struct boot_info *boot_info;
/* set when started as a multiboot kernel: argv[0] and the first module (the initrd) */
extern const char *mb_argv0;
extern const void *mb_module_start;
extern uint64_t mb_module_size;

void putc(char c);
int puts(const char *s); /* as C's: appends a newline; printf("%s", s) does not */
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vprintf(const char *fmt, va_list ap);
int vsnprintf(char *buf, size_t cap, const char *fmt, va_list ap);
__attribute__((noreturn)) void exit(uint32_t code);

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
const char *skip_word(const char *s);
void sort_u64(uint64_t *v, unsigned n);
uint64_t parse_u64(const char *s);

/* SMP: start every AP with INIT + SIPI (trampoline at 0x8000); returns how many came up. */
unsigned smp_start_aps(unsigned expected);
extern volatile uint32_t ap_started;

int main(struct boot_info *bi, const char *cmdline);
void rt_start(struct boot_info *bi);
void ap_main(uint32_t index);

#endif

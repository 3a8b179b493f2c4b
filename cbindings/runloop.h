/*
 * runloop.h - the hot path of pyvmm: KVM_RUN in C, with a per-vCPU fast exit table.
 *
 * Python fills the table (struct pyvmm_fast_entry) for PIO ports and MMIO ranges whose
 * exits can be answered without Python: a sink, a byte buffer (UART THR), a stop (debug
 * exit) or a counter (POST port).  pyvmm_loop_run() calls KVM_RUN until an exit the table
 * does not cover, a stop, a full buffer, a kick or an error, and only then returns to
 * Python.  It is called with the GIL released (cffi does that for API-mode calls), so
 * several vCPU threads run guest code in parallel.
 */
#ifndef PYVMM_RUNLOOP_H
#define PYVMM_RUNLOOP_H

#include <stdint.h>
#include <pthread.h>
#include <linux/kvm.h>

/* cdef-begin: from here to cdef-end, build_native.py hands this text to cffi as it is, but
 * for lines ending in the not-in-cdef mark and a "...;" it adds at the end of each struct
 * (cffi then takes the layout from the compiler): the one declaration of these constants,
 * structs and functions for C and Python alike.  Keep it to what cffi's cdef parses. */
#define PYVMM_MAX_ENTRIES 64
#define PYVMM_MAX_REASONS 64
#define PYVMM_MAX_UNCLAIMED 32

/* address spaces */
#define PYVMM_SPACE_PIO 0
#define PYVMM_SPACE_MMIO 1
/* access directions (bit mask) */
#define PYVMM_DIR_READ 1
#define PYVMM_DIR_WRITE 2
/* what an entry does */
#define PYVMM_ACT_SINK 1    /* writes dropped, reads return read_value */
#define PYVMM_ACT_BUFFER 2  /* written bytes appended to the loop's byte buffer */
#define PYVMM_ACT_STOP 3    /* a write stops the loop; the value written is stop_value */
#define PYVMM_ACT_COUNTER 4 /* like SINK, and the last value written is kept */
#define PYVMM_ACT_CLOCK 5   /* reads: CLOCK_MONOTONIC since read_value (ns) at clock_hz, & clock_mask */

/* why pyvmm_loop_run() returned */
#define PYVMM_RET_EXIT 0   /* an exit the table does not cover: run->exit_reason says which */
#define PYVMM_RET_STOP 1   /* a STOP entry was written: stop_value, stop_entry */
#define PYVMM_RET_BUFFER 2 /* the byte buffer reached its flush mark */
#define PYVMM_RET_KICKED 3 /* pyvmm_loop_kick() was called (timeout, stop, pause) */
#define PYVMM_RET_ERROR 4  /* KVM_RUN failed: last_errno */

struct pyvmm_fast_entry {
    uint64_t base;
    uint64_t len;
    uint64_t read_value;
    uint64_t last_value;
    uint64_t hits;
    uint8_t space;
    uint8_t dirs;
    uint8_t action;
    uint8_t enabled;
    uint32_t pad;
    uint64_t clock_hz;   /* PYVMM_ACT_CLOCK: ticks per second (the ACPI PM timer: 3579545) */
    uint64_t clock_mask; /* PYVMM_ACT_CLOCK: the counter's width */
};

/* One exit as --trace records it (struct pyvmm_loop.trace, a ring). */
struct pyvmm_trace_rec {
    uint64_t t_enter; /* CLOCK_MONOTONIC ns just before KVM_RUN */
    uint64_t t_exit;  /* ... just after it returned */
    uint64_t rip;     /* kvm_run->s.regs (KVM_CAP_SYNC_REGS) at the exit */
    uint64_t addr;    /* I/O port, MMIO address or MSR index; 0 for other exits */
    uint64_t data;    /* the value written, or read (filled when the answer is known) */
    uint32_t reason;  /* KVM_EXIT_*; PYVMM_TRACE_EINTR when KVM_RUN returned EINTR */
    uint16_t size;    /* access size in bytes (I/O: size * count) */
    uint8_t is_write;
    uint8_t flags;    /* PYVMM_TRACE_FAST: answered by the fast table; _PENDING: read data not yet known */
};
#define PYVMM_TRACE_EINTR 0xFFFFFFFFu
#define PYVMM_TRACE_FAST 1
#define PYVMM_TRACE_PENDING 2

struct pyvmm_loop {
    int vcpu_fd;
    int last_errno;
    struct kvm_run *run;
    uint64_t run_size;
    volatile int stop_requested;
    volatile int flush_requested; /* pyvmm_loop_request_flush(): hand a partial buffer back */
    volatile int thread_valid;
    pthread_t thread; /* not in cdef */
    uint32_t n_entries;
    uint32_t stop_entry;
    uint64_t stop_value;
    struct pyvmm_fast_entry entries[PYVMM_MAX_ENTRIES];
    uint8_t *buf;
    uint32_t buf_cap;
    uint32_t buf_len;
    uint32_t buf_flush_at;     /* return PYVMM_RET_BUFFER once buf_len reaches this */
    uint32_t buf_flush_newline; /* ... or when a '\n' was appended */
    /* Unclaimed I/O answered in C (reads all-ones, writes dropped) when answer_unclaimed
     * is set: a port is claimed when its bit in claimed_ports is set; an MMIO address is
     * claimed when it falls in one of claimed_mmio[0..n_claimed_mmio).  Unclaimed
     * accesses are counted per port in unclaimed_pio and per address in unclaimed_mmio
     * (the first PYVMM_MAX_UNCLAIMED of each; any others go to Python, which counts them
     * itself).  A small table, not 64K counters: machines are created by the thousand and
     * every page a new one touches costs a fault. */
    uint32_t answer_unclaimed;
    uint32_t n_claimed_mmio;
    uint8_t *claimed_ports;
    uint64_t claimed_mmio[PYVMM_MAX_ENTRIES][2];
    uint32_t n_unclaimed_mmio;
    uint64_t unclaimed_mmio[PYVMM_MAX_UNCLAIMED][2]; /* address, count */
    uint32_t n_unclaimed_pio;
    uint64_t unclaimed_pio[PYVMM_MAX_UNCLAIMED][2];  /* port, count */
    /* --trace: when trace is set, every KVM_RUN leaves one record in this ring of
     * trace_cap (a power of two) records; trace_head counts every record ever written,
     * so records before trace_head - trace_cap were overwritten (dropped). */
    struct pyvmm_trace_rec *trace;
    uint64_t trace_cap;
    uint64_t trace_head;
    uint64_t kvm_runs;          /* KVM_RUN ioctls issued */
    uint64_t exit_counts[PYVMM_MAX_REASONS];
};

int pyvmm_loop_run(struct pyvmm_loop *l);
/* Answer the exit now in l->run from the table: -1 handled, else PYVMM_RET_*.
 * pyvmm_loop_run() uses it after every KVM_RUN; unit tests call it on a fake kvm_run. */
int pyvmm_loop_dispatch(struct pyvmm_loop *l);
int pyvmm_loop_kick(struct pyvmm_loop *l);
/* CLOCK_MONOTONIC in ns, the trace's clock (Python's time.monotonic_ns() reads the same). */
uint64_t pyvmm_monotonic_ns(void);
/* Ask the loop to return PYVMM_RET_BUFFER soon if its byte buffer holds anything (a
 * partial line), also when the vCPU sits in HLT: a flag and the kick signal, no
 * immediate_exit.  Called by the VMM's timer thread. */
int pyvmm_loop_request_flush(struct pyvmm_loop *l);
void pyvmm_loop_bind_thread(struct pyvmm_loop *l);
void pyvmm_loop_unbind_thread(struct pyvmm_loop *l);
int pyvmm_kick_signal(void);
int pyvmm_install_kick_handler(void);
long pyvmm_ioctl(int fd, unsigned long request, void *arg);
long pyvmm_ioctl_val(int fd, unsigned long request, unsigned long value);
void *pyvmm_mmap(uint64_t size, int fd, int flags, int *err);
void *pyvmm_mmap_file(uint64_t size, int fd, uint64_t offset, int *err);
int pyvmm_munmap(void *addr, uint64_t size);
int pyvmm_madvise(void *addr, uint64_t size, int advice);
/* cdef-end */

#endif

/*
 * runloop.c - KVM_RUN loop with a fast exit table.  See runloop.h for the contract.
 *
 * Cost model (HOST-KVM.md): a userspace exit costs ~9 us and any other vCPU ioctl ~7 us,
 * so the loop issues exactly one ioctl (KVM_RUN) per exit it answers itself.  Register
 * state is read by Python through kvm_run->s.regs (KVM_CAP_SYNC_REGS), never here.
 */
#define _GNU_SOURCE
#include "runloop.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>

long pyvmm_ioctl(int fd, unsigned long request, void *arg)
{
    long r = ioctl(fd, request, arg);
    return r < 0 ? -errno : r;
}

long pyvmm_ioctl_val(int fd, unsigned long request, unsigned long value)
{
    long r = ioctl(fd, request, value);
    return r < 0 ? -errno : r;
}

void *pyvmm_mmap(uint64_t size, int fd, int flags, int *err)
{
    /* flags: bit0 = map fd shared (kvm_run), bit1 = MAP_NORESERVE, bit2 = MAP_HUGETLB */
    int mflags = MAP_SHARED;
    if (fd < 0)
        mflags |= MAP_ANONYMOUS;
    if (flags & 2)
        mflags |= MAP_NORESERVE;
    if (flags & 4)
        mflags |= MAP_HUGETLB;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, mflags, fd, 0);
    if (p == MAP_FAILED) {
        *err = errno;
        return NULL;
    }
    *err = 0;
    return p;
}

void *pyvmm_mmap_file(uint64_t size, int fd, uint64_t offset, int *err)
{
    /* a private (copy-on-write) writable mapping of a file: a snapshot's RAM for a clone */
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, (off_t)offset);
    if (p == MAP_FAILED) {
        *err = errno;
        return NULL;
    }
    *err = 0;
    return p;
}

int pyvmm_munmap(void *addr, uint64_t size)
{
    return munmap(addr, size) < 0 ? -errno : 0;
}

int pyvmm_madvise(void *addr, uint64_t size, int advice)
{
    return madvise(addr, size, advice) < 0 ? -errno : 0;
}

static void kick_handler(int sig)
{
    (void)sig; /* only here so that KVM_RUN returns EINTR */
}

int pyvmm_kick_signal(void)
{
    return SIGRTMIN + 6;
}

int pyvmm_install_kick_handler(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = kick_handler; /* no SA_RESTART: the ioctl must return EINTR */
    sigemptyset(&sa.sa_mask);
    return sigaction(pyvmm_kick_signal(), &sa, NULL) < 0 ? -errno : 0;
}

void pyvmm_loop_bind_thread(struct pyvmm_loop *l)
{
    l->thread = pthread_self();
    __atomic_store_n(&l->thread_valid, 1, __ATOMIC_SEQ_CST);
}

void pyvmm_loop_unbind_thread(struct pyvmm_loop *l)
{
    __atomic_store_n(&l->thread_valid, 0, __ATOMIC_SEQ_CST);
}

int pyvmm_loop_kick(struct pyvmm_loop *l)
{
    /* Order matters: the flag is checked before every KVM_RUN, immediate_exit covers a
     * thread between that check and the ioctl, and the signal covers one inside it. */
    __atomic_store_n(&l->stop_requested, 1, __ATOMIC_SEQ_CST);
    if (l->run)
        __atomic_store_n(&l->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&l->thread_valid, __ATOMIC_SEQ_CST))
        return pthread_kill(l->thread, pyvmm_kick_signal()) ? -1 : 0;
    return 0;
}

int pyvmm_loop_request_flush(struct pyvmm_loop *l)
{
    __atomic_store_n(&l->flush_requested, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&l->thread_valid, __ATOMIC_SEQ_CST))
        return pthread_kill(l->thread, pyvmm_kick_signal()) ? -1 : 0;
    return 0;
}

/* A flush was asked for: PYVMM_RET_BUFFER if there is anything to hand back. */
static int flush_due(struct pyvmm_loop *l)
{
    if (!__atomic_load_n(&l->flush_requested, __ATOMIC_RELAXED))
        return 0;
    __atomic_store_n(&l->flush_requested, 0, __ATOMIC_SEQ_CST);
    return l->buf_len > 0;
}

static struct pyvmm_fast_entry *lookup(struct pyvmm_loop *l, int space, uint64_t addr,
                                       uint64_t len, int dir)
{
    for (uint32_t i = 0; i < l->n_entries; i++) {
        struct pyvmm_fast_entry *e = &l->entries[i];
        if (e->enabled && e->space == space && (e->dirs & dir) && addr >= e->base &&
            addr - e->base < e->len && len <= e->len - (addr - e->base))
            return e;
    }
    return NULL;
}

static uint64_t load_le(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n && i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void store_le(uint8_t *p, unsigned n, uint64_t v)
{
    for (unsigned i = 0; i < n && i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* A CLOCK entry's value as read at ``addr``: ticks since read_value (ns) at clock_hz. */
static uint64_t clock_read(const struct pyvmm_fast_entry *e, uint64_t addr)
{
    uint64_t ns = pyvmm_monotonic_ns() - e->read_value;
    uint64_t ticks = (uint64_t)((unsigned __int128)ns * e->clock_hz / 1000000000u);
    return (ticks & e->clock_mask) >> (8 * (addr - e->base));
}

/* Returns -1 when the exit was answered and the loop goes on, else a PYVMM_RET_* code. */
static int answer(struct pyvmm_loop *l, struct pyvmm_fast_entry *e, uint8_t *data,
                  unsigned size, unsigned count, int is_write, uint64_t addr)
{
    e->hits++;
    if (!is_write) {
        uint64_t v = e->action == PYVMM_ACT_CLOCK ? clock_read(e, addr) : e->read_value;
        for (unsigned i = 0; i < count; i++)
            store_le(data + i * size, size, v);
        return -1;
    }
    switch (e->action) {
    case PYVMM_ACT_SINK:
        return -1;
    case PYVMM_ACT_COUNTER:
        e->last_value = load_le(data + (count - 1) * size, size);
        return -1;
    case PYVMM_ACT_STOP:
        l->stop_value = load_le(data, size);
        l->stop_entry = (uint32_t)(e - l->entries);
        return PYVMM_RET_STOP;
    case PYVMM_ACT_BUFFER: {
        int newline = 0;
        for (unsigned i = 0; i < count; i++) {
            uint8_t c = data[i * size];
            if (l->buf_len < l->buf_cap)
                l->buf[l->buf_len++] = c;
            newline |= (c == '\n');
        }
        if (l->buf_len >= l->buf_flush_at || (newline && l->buf_flush_newline))
            return PYVMM_RET_BUFFER;
        return -1;
    }
    }
    return PYVMM_RET_EXIT;
}

static void fill_ones(uint8_t *data, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        data[i] = 0xFF;
}

static int mmio_claimed(struct pyvmm_loop *l, uint64_t addr, unsigned len)
{
    for (uint32_t i = 0; i < l->n_claimed_mmio; i++)
        if (addr + len > l->claimed_mmio[i][0] && addr < l->claimed_mmio[i][0] + l->claimed_mmio[i][1])
            return 1;
    return 0;
}

/* Count ``n`` accesses to ``addr`` in a table of PYVMM_MAX_UNCLAIMED (address, count)
 * pairs; 0 when the table is full and ``addr`` is not in it (Python counts it then). */
static int count_in(uint64_t table[][2], uint32_t *used, uint64_t addr, uint64_t n)
{
    for (uint32_t i = 0; i < *used; i++)
        if (table[i][0] == addr) {
            table[i][1] += n;
            return 1;
        }
    if (*used == PYVMM_MAX_UNCLAIMED)
        return 0;
    table[*used][0] = addr;
    table[(*used)++][1] = n;
    return 1;
}

/* The fast path for one exit; -1 = handled, else a PYVMM_RET_* code. */
int pyvmm_loop_dispatch(struct pyvmm_loop *l)
{
    struct kvm_run *run = l->run;
    if (run->exit_reason == KVM_EXIT_IO) {
        unsigned size = run->io.size, count = run->io.count;
        uint64_t off = run->io.data_offset;
        /* kvm_run comes from the kernel, but the data window is still checked */
        if (size == 0 || size > 8 || count == 0 || off >= l->run_size ||
            (uint64_t)size * count > l->run_size - off)
            return PYVMM_RET_EXIT;
        int is_write = run->io.direction == KVM_EXIT_IO_OUT;
        struct pyvmm_fast_entry *e = lookup(l, PYVMM_SPACE_PIO, run->io.port, size,
                                            is_write ? PYVMM_DIR_WRITE : PYVMM_DIR_READ);
        if (e)
            return answer(l, e, (uint8_t *)run + off, size, count, is_write, run->io.port);
        uint16_t port = run->io.port;
        if (l->answer_unclaimed && l->claimed_ports &&
            !(l->claimed_ports[port >> 3] & (1u << (port & 7))) &&
            (port + size - 1 > 0xFFFF ||
             !(l->claimed_ports[(port + size - 1) >> 3] & (1u << ((port + size - 1) & 7)))) &&
            count_in(l->unclaimed_pio, &l->n_unclaimed_pio, port, count)) {
            if (!is_write)
                fill_ones((uint8_t *)run + off, size * count);
            return -1;
        }
        return PYVMM_RET_EXIT;
    }
    if (run->exit_reason == KVM_EXIT_MMIO) {
        unsigned len = run->mmio.len;
        if (len == 0 || len > 8)
            return PYVMM_RET_EXIT;
        struct pyvmm_fast_entry *e =
            lookup(l, PYVMM_SPACE_MMIO, run->mmio.phys_addr, len,
                   run->mmio.is_write ? PYVMM_DIR_WRITE : PYVMM_DIR_READ);
        if (e)
            return answer(l, e, run->mmio.data, len, 1, run->mmio.is_write, run->mmio.phys_addr);
        if (l->answer_unclaimed && !mmio_claimed(l, run->mmio.phys_addr, len) &&
            count_in(l->unclaimed_mmio, &l->n_unclaimed_mmio, run->mmio.phys_addr, 1)) {
            if (!run->mmio.is_write)
                fill_ones(run->mmio.data, len);
            return -1;
        }
        return PYVMM_RET_EXIT;
    }
    return PYVMM_RET_EXIT;
}

uint64_t pyvmm_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The data of the exit now in l->run: what was written, or (after the answer) read. */
static uint64_t exit_data(struct pyvmm_loop *l)
{
    struct kvm_run *run = l->run;
    if (run->exit_reason == KVM_EXIT_IO) {
        uint64_t off = run->io.data_offset;
        unsigned size = run->io.size;
        if (size == 0 || size > 8 || off >= l->run_size || size > l->run_size - off)
            return 0;
        return load_le((uint8_t *)run + off, size);
    }
    if (run->exit_reason == KVM_EXIT_MMIO)
        return load_le(run->mmio.data, run->mmio.len <= 8 ? run->mmio.len : 8);
    if (run->exit_reason == KVM_EXIT_X86_RDMSR || run->exit_reason == KVM_EXIT_X86_WRMSR)
        return run->msr.data;
    return 0;
}

/* Start a record for the exit that KVM_RUN (entered at t_enter) just returned. */
static struct pyvmm_trace_rec *trace_exit(struct pyvmm_loop *l, uint64_t t_enter, int failed)
{
    struct pyvmm_trace_rec *t = &l->trace[l->trace_head++ & (l->trace_cap - 1)];
    struct kvm_run *run = l->run;
    memset(t, 0, sizeof(*t));
    t->t_enter = t_enter;
    t->t_exit = pyvmm_monotonic_ns();
    if (failed) {
        t->reason = PYVMM_TRACE_EINTR;
        return t;
    }
    t->reason = run->exit_reason;
    if (run->kvm_valid_regs & KVM_SYNC_X86_REGS)
        t->rip = run->s.regs.regs.rip;
    switch (run->exit_reason) {
    case KVM_EXIT_IO:
        t->addr = run->io.port;
        t->size = (uint16_t)(run->io.size * (run->io.count < 8192 ? run->io.count : 8192));
        t->is_write = run->io.direction == KVM_EXIT_IO_OUT;
        break;
    case KVM_EXIT_MMIO:
        t->addr = run->mmio.phys_addr;
        t->size = (uint16_t)run->mmio.len;
        t->is_write = run->mmio.is_write;
        break;
    case KVM_EXIT_X86_RDMSR:
    case KVM_EXIT_X86_WRMSR:
        t->addr = run->msr.index;
        t->size = 8;
        t->is_write = run->exit_reason == KVM_EXIT_X86_WRMSR;
        break;
    }
    if (t->is_write)
        t->data = exit_data(l);
    else if (t->size)
        t->flags |= PYVMM_TRACE_PENDING;
    return t;
}

/* Before re-entering the guest: the last read's answer is in kvm_run now (C or Python). */
static void trace_reentry(struct pyvmm_loop *l)
{
    if (!l->trace_head)
        return;
    struct pyvmm_trace_rec *t = &l->trace[(l->trace_head - 1) & (l->trace_cap - 1)];
    if (t->flags & PYVMM_TRACE_PENDING) {
        t->data = exit_data(l);
        t->flags &= (uint8_t)~PYVMM_TRACE_PENDING;
    }
}

int pyvmm_loop_run(struct pyvmm_loop *l)
{
    int tracing = l->trace && l->trace_cap && !(l->trace_cap & (l->trace_cap - 1));
    for (;;) {
        if (__atomic_load_n(&l->stop_requested, __ATOMIC_SEQ_CST))
            return PYVMM_RET_KICKED;
        l->kvm_runs++;
        uint64_t t_enter = 0;
        if (tracing) {
            trace_reentry(l);
            t_enter = pyvmm_monotonic_ns();
        }
        int rc = ioctl(l->vcpu_fd, KVM_RUN, 0);
        struct pyvmm_trace_rec *rec = tracing ? trace_exit(l, t_enter, rc < 0) : NULL;
        if (rc < 0) {
            int err = errno;
            if (err == EINTR || err == EAGAIN) {
                l->exit_counts[KVM_EXIT_INTR]++;
                if (__atomic_load_n(&l->stop_requested, __ATOMIC_SEQ_CST))
                    return PYVMM_RET_KICKED;
                if (flush_due(l))
                    return PYVMM_RET_BUFFER;
                continue; /* a stray signal, or a flush with nothing buffered: go back in */
            }
            l->last_errno = err;
            return PYVMM_RET_ERROR;
        }
        uint32_t reason = l->run->exit_reason;
        l->exit_counts[reason < PYVMM_MAX_REASONS ? reason : 0]++;
        int r = pyvmm_loop_dispatch(l);
        if (rec && r < 0)
            rec->flags |= PYVMM_TRACE_FAST;
        if (r >= 0)
            return r;
        if (flush_due(l))
            return PYVMM_RET_BUFFER;
    }
}

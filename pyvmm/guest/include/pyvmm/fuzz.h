/* fuzz.h - fuzz targets: the input point and the coverage map (docs/fuzzing.md).
 *
 *   static uint8_t buf[4096];
 *   static long parse_input(long unused)
 *   {
 *           size_t n = GUEST_FUZZ_INPUT(buf, sizeof(buf));  // the host's input, n bytes
 *           parse(buf, n);                                  // a crash, a GUEST_ASSERT ...
 *           GUEST_DONE();                                   // ... or this ends the input
 *   }
 *   int main(...) { GUEST_USER_CALL(parse_input, 0); }      // the parser at CPL3
 *
 * GUEST_FUZZ_INPUT is a GUEST_SYNC of stage GUEST_FUZZ_STAGE carrying the buffer, its
 * size and where the length goes.  The host (pyvmm.fuzz.Target, `pyvmm fuzz-target`)
 * takes a snapshot at the first one; for every input it restores that snapshot, writes
 * the input into buf (at most maxlen bytes: both checked against guest RAM) and its
 * length, and runs the guest on from the sync until GUEST_DONE, a return from main, an
 * exit(), the next GUEST_FUZZ_INPUT (a loop is fine), a crash, an assertion or a hang.
 * buf must be identity-mapped (static buffers and the stacks are) and, for code at CPL3,
 * user-accessible (the guest image is; guest_user_map() for others).  Without a host
 * that fuzzes (plain `pyvmm run`) the call returns 0: an empty input.
 *
 * Coverage: `pyvmm guest build --coverage` compiles the guest's own sources (CPL0 and
 * --user-src) with -fsanitize-coverage=trace-pc and links pyvmm's hook, which counts AFL
 * style edges (map[cur ^ prev]++, prev = cur >> 1) into __pyvmm_cov_map.  The host finds
 * the map by its symbol (address and size from the ELF), never by a fixed address.
 */
#ifndef PYVMM_FUZZ_H
#define PYVMM_FUZZ_H

#include <stddef.h>
#include <stdint.h>

/* the GUEST_SYNC stage of the input point ("ZZUF" in memory) */
#define GUEST_FUZZ_STAGE 0x46555a5aul
/* the coverage map's size (a power of two: AFL's default map) */
#define GUEST_FUZZ_MAP_SIZE 65536u

/* The next input: at most maxlen bytes copied into buf by the host; returns how many. */
size_t guest_fuzz_input(void *buf, size_t maxlen);
#define GUEST_FUZZ_INPUT(buf, maxlen) guest_fuzz_input((buf), (maxlen))

/* the coverage map and the previous location (linked with --coverage only) */
extern uint8_t __pyvmm_cov_map[GUEST_FUZZ_MAP_SIZE];
extern uint64_t __pyvmm_cov_prev;

#endif

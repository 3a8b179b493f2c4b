/* tlv.h - a small TLV ("type, length, value") container parser, the fuzz example's target.
 * The same source builds into the pyvmm guest (run at CPL3) and natively (afl-cc). */
#ifndef TLV_H
#define TLV_H

#include <stddef.h>
#include <stdint.h>

struct tlv_summary {
	uint32_t records;
	uint32_t names;
	uint64_t total;     /* sum of the integer records */
	uint32_t checksum;  /* of the blob records' bytes */
	char name[32];
};

/* 0 when data is a well-formed container, a negative error otherwise */
int tlv_parse(const uint8_t *data, size_t len, struct tlv_summary *out);

#endif

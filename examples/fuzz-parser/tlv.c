/* tlv.c - parse a TLV container (tlv.h).
 *
 *   "TLV1" | count (1 byte) | count records of: type (1) | length (1) | value (length)
 *
 * types: 'N' a name (copied, at most 31 bytes), 'I' a little-endian integer (1-8 bytes,
 * summed), 'B' a blob (checksummed), 'G' a group: a nested container, at most 3 deep.
 * Unknown types are skipped.
 *
 * The planted bug: a blob may hold "FZ" marks, each followed by a page index into a 4 KiB
 * table, which is not checked: "FZ" then any byte but 0 writes far outside the table (a
 * #PF in the guest, SIGSEGV natively).  The two-byte mark is compared byte by byte, so
 * coverage-guided fuzzing climbs it one byte at a time.
 */
#include "tlv.h"

#define MAX_DEPTH 3

static volatile uint8_t table[4096]; /* volatile: the store below must stay */

static uint32_t mix(uint32_t h, uint8_t b)
{
	h ^= b;
	h *= 16777619u; /* FNV-1a */
	return h;
}

/* how far a blob got into the "FZ" check: a volatile store per byte, so that the compiler
 * cannot fold the three compares into one (each byte is then an edge of its own) */
static volatile int blob_magic;

static int parse_blob(const uint8_t *v, size_t n, struct tlv_summary *out)
{
	for (size_t i = 0; i < n; i++)
		out->checksum = mix(out->checksum, v[i]);
	for (size_t i = 0; i + 2 < n; i++) { /* an "FZ" mark: a page index follows */
		if (v[i] != 'F')
			continue;
		blob_magic = 1;
		if (v[i + 1] != 'Z')
			continue;
		blob_magic = 2;
		size_t page = v[i + 2];
		table[page << 40] = 1; /* the bug: page is never checked */
	}
	return 0;
}

static int parse_int(const uint8_t *v, size_t n, struct tlv_summary *out)
{
	if (n == 0 || n > 8)
		return -3;
	uint64_t x = 0;
	for (size_t i = 0; i < n; i++)
		x |= (uint64_t)v[i] << (8 * i);
	out->total += x;
	return 0;
}

static int parse_name(const uint8_t *v, size_t n, struct tlv_summary *out)
{
	size_t k = n < sizeof(out->name) - 1 ? n : sizeof(out->name) - 1;
	for (size_t i = 0; i < k; i++) {
		if (v[i] < 0x20 || v[i] > 0x7e)
			return -4; /* printable names only */
		out->name[i] = (char)v[i];
	}
	out->name[k] = 0;
	out->names++;
	return 0;
}

static int parse_container(const uint8_t *p, size_t len, struct tlv_summary *out, int depth)
{
	if (depth > MAX_DEPTH)
		return -5;
	if (len < 5 || p[0] != 'T' || p[1] != 'L' || p[2] != 'V' || p[3] != '1')
		return -1;
	size_t count = p[4], at = 5;
	for (size_t r = 0; r < count; r++) {
		if (len - at < 2)
			return -2;
		uint8_t type = p[at], n = p[at + 1];
		at += 2;
		if (len - at < n)
			return -2;
		const uint8_t *v = p + at;
		int err = 0;
		switch (type) {
		case 'N':
			err = parse_name(v, n, out);
			break;
		case 'I':
			err = parse_int(v, n, out);
			break;
		case 'B':
			err = parse_blob(v, n, out);
			break;
		case 'G':
			err = parse_container(v, n, out, depth + 1);
			break;
		default:
			break; /* skipped */
		}
		if (err)
			return err;
		out->records++;
		at += n;
	}
	return at == len ? 0 : -6; /* trailing bytes */
}

int tlv_parse(const uint8_t *data, size_t len, struct tlv_summary *out)
{
	for (size_t i = 0; i < sizeof(*out); i++)
		((uint8_t *)out)[i] = 0;
	out->checksum = 2166136261u;
	return parse_container(data, len, out, 0);
}

/* The punched path's frames in batches (csrc/frames.c): HMAC-SHA256 tags and the replay window of
 * proto/handshake.py, applied to a whole recvmmsg batch (or a whole burst to send) in one call, so the
 * raw punched path does not pay Python's per-frame cost. The frame format is handshake.py's:
 *     magic "nT" | version 1 | type 1 | counter 8 (big endian) | body | tag 16
 * tag = the first 16 bytes of HMAC-SHA256(key, everything before it).
 *
 * Like nattrav_core.h, the block between the markers is read verbatim by build_ext.py as cffi cdef.
 */
#ifndef NATTRAV_FRAMES_H
#define NATTRAV_FRAMES_H

#include "nattrav_core.h"

/* NATTRAV_CDEF_BEGIN */
#define NT_FRAME_FOREIGN -1   /* from an address not on the allow list: dropped, not counted */
#define NT_FRAME_CUT -2       /* longer than its slot (recvmmsg cut it): dropped, not counted */
#define NT_FRAME_REJECTED -3  /* malformed, bad tag or replayed counter: dropped and counted */
#define NT_FRAME_DEFER -4     /* a well-formed handshake frame (HELLO, ACK, CONFIRM, CLOSE): not
                                 checked here; the batch stops at it for Python's Handshake */
#define NT_FRAME_RAW 0        /* key NULL: an accepted datagram, no framing */
#define NT_FRAME_KEEPALIVE 3
#define NT_FRAME_DATA 4
#define NT_FRAME_OVERHEAD 28  /* header 12 + tag 16 */
#define NT_FRAME_HEADER 12
/* HMAC-SHA256 with the key's inner and outer block already hashed. */
typedef struct { uint32_t inner[8]; uint32_t outer[8]; } nt_mac_key;
/* handshake.ReplayWindow of 1024 counters: bit i of bits (word i/64, bit i%64) = counter top - i was
 * seen; empty = 1 before any counter. */
typedef struct { uint64_t top; uint64_t empty; uint64_t bits[16]; } nt_replay_window;
/* What one nt_frames_open call accepted: path statistics without a Python step per frame. */
typedef struct {
    int64_t data;             /* DATA frames (or raw datagrams) accepted */
    int64_t keepalives;
    int64_t data_bytes;       /* their payload bytes */
    int64_t rejected;
    int64_t foreign;
    int64_t cut;
    uint64_t first_counter;   /* counter of the first frame accepted (valid when data + keepalives > 0) */
    uint64_t high_counter;    /* the highest accepted */
    uint64_t last_counter;    /* the last accepted */
} nt_frames_summary;

/* 0 (1 = SHA-NI instructions in use), or -EINVAL. */
int nt_mac_key_init(nt_mac_key *k, const uint8_t *key, int key_len);
/* Tests: portable != 0 makes SHA-256 use the portable code even where SHA-NI exists (0: back to the
 * best). Returns 1 when SHA-NI is now in use. Keys made under one are valid under the other. */
int nt_sha256_portable(int portable);
/* out32 = HMAC-SHA256(key, msg). */
int nt_hmac_sha256(const nt_mac_key *k, const uint8_t *msg, int len, uint8_t *out32);
/* Check datagrams from..n-1 of a recvmmsg batch (datagram i at bufs + i*bufsize, lens[i] long, -1 when
 * cut, from addrs[i]) in order: the source must be one of allow[0..nallow) (nallow 0: any), then, with a
 * key, the structure, the tag and the window (accepted counters enter it). kinds[i] = NT_FRAME_* or
 * the frame type; counters[i] = its counter. Returns the index it stopped at: n, or a DEFER frame's. The
 * summary is added to (not reset). */
int nt_frames_open(const nt_mac_key *k, nt_replay_window *w, const uint8_t *bufs, int bufsize,
                   const int *lens, const nt_addr *addrs, int from, int n, const nt_addr *allow,
                   int nallow, int32_t *kinds, uint64_t *counters, nt_frames_summary *sum);
/* Make n DATA frames in place: frame i at bufs + i*frame_len, its payload already at offset 12,
 * frame_len - 28 bytes long; header and tag are written with counters first, first+1... Returns n. */
int nt_frames_seal(const nt_mac_key *k, uint64_t first, uint8_t *bufs, int frame_len, int n);
/* NATTRAV_CDEF_END */

#endif

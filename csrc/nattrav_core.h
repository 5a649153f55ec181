/* nattrav C core: the hot loops only. Every function returns >= 0 on success or -errno.
 *
 * The block between NATTRAV_CDEF_BEGIN and NATTRAV_CDEF_END is read verbatim by build_ext.py as the
 * cffi cdef, so it must stay plain C declarations (no #include, no #if, no macros with arguments).
 */
#ifndef NATTRAV_CORE_H
#define NATTRAV_CORE_H

#include <stdint.h>
#include <stddef.h>

/* NATTRAV_CDEF_BEGIN */
#define NT_POOL_REUSEADDR 1
#define NT_POOL_REUSEPORT 2
#define NT_POOL_BLOCKING 4

/* Open `count` IPv4 UDP sockets bound to `ip_be` (network byte order, 0 = any) and, if `bind_ports`
 * is not NULL, to bind_ports[i] (0 = kernel's choice). Non-blocking unless NT_POOL_BLOCKING. If ttl > 0,
 * IP_TTL is set. Fills fds[i] and ports_out[i] (host order). Returns count, or -errno after closing
 * every socket it opened. */
int nt_pool_open(int count, uint32_t ip_be, const uint16_t *bind_ports, int flags, int ttl,
                 int *fds, uint16_t *ports_out);

/* Close `count` descriptors; returns the number closed without error. */
int nt_pool_close(const int *fds, int count);

/* Set IP_TTL on one socket (1..255). */
int nt_set_ttl(int fd, int ttl);
/* NATTRAV_CDEF_END */

#endif

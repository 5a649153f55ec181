/* Internal to the C core, not part of the cffi interface (nattrav_core.h is): one slot of a
 * sendmmsg/recvmmsg vector, which the burst, the receive loop and the STUN batch calls all fill. */
#ifndef NATTRAV_MSG_H
#define NATTRAV_MSG_H

#include <string.h>
#include <sys/socket.h>

/* Slot `m` carries one datagram of `len` bytes at `base`, to or from the address at `name`. */
static inline void nt_msg_slot(struct mmsghdr *m, struct iovec *iov, void *base, size_t len, void *name,
                               socklen_t namelen)
{
    iov->iov_base = base;
    iov->iov_len = len;
    memset(&m->msg_hdr, 0, sizeof m->msg_hdr);
    m->msg_hdr.msg_name = name;
    m->msg_hdr.msg_namelen = namelen;
    m->msg_hdr.msg_iov = iov;
    m->msg_hdr.msg_iovlen = 1;
}

#endif

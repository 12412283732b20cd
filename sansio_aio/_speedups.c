/* sansio_aio._speedups: batched datagram system calls for the UDP and TUN drivers.
 *
 * Theory of operation
 * -------------------
 * Python's socket module has no recvmmsg/sendmmsg, so a pure-Python drain pays one
 * system call and one Python call (plus, at the end, one raised BlockingIOError) per
 * datagram. These three functions move the loop into C; everything else (which task gets
 * what, errors as inputs, counters) stays in the drivers, which fall back to the pure
 * loops when this module is missing or SANSIO_AIO_PURE=1 is set (see _fast.py).
 *
 * recvmmsg(fd, count[, make, slot]) -> list[(address, bytes)] or list[make(slot, address, bytes)]
 *     One recvmmsg(2) of up to `count` (<= MAX_BATCH) datagrams on a non-blocking
 *     AF_INET/AF_INET6 socket (MSG_DONTWAIT). Each slot is RECV_SIZE bytes, larger than
 *     any UDP payload, so nothing is truncated. An empty list for EAGAIN/EINTR; OSError
 *     for any other failure (as socket.recvfrom would raise it). Addresses are built the
 *     way CPython's socket module builds them, (host, port) or (host, port, flowinfo,
 *     scope_id), and a datagram from the same address as the one before reuses its tuple.
 *
 * sendmmsg(fd, family, items, start) -> int
 *     Sends items[start:] ((address, bytes) pairs) with sendmmsg(2), MAX_BATCH at a time,
 *     and returns the index of the first item not sent: len(items) when all went. It stops
 *     early, without raising, at an item it cannot send itself (not a pair, data not
 *     bytes, a host that is not a numeric address of the socket's family, a bad port) or
 *     at the first item the kernel refuses. The caller sends that one item with
 *     socket.sendto, which raises exactly as it always did, then calls again after it.
 *
 * readmany(fd, count, size[, make, slot]) -> list[bytes] (or of make(slot, bytes))
 *     Up to `count` read(2)s of at most `size` (<= 4 MiB) bytes each (a TUN device gives
 *     one packet per read) until EAGAIN; with `make`, each read shorter than `size` comes
 *     as make(slot, data) and a read that filled `size` (cut) as its bytes; OSError if the first read fails otherwise (a
 *     later failure ends the list; the next readiness reports it).
 *
 * maker(cls, fields) -> callable
 *     A constructor for one of sansio_aio's own @final slotted dataclasses (events the
 *     runtime builds per packet or message: UdpPacket, TunPacket, Ext, TaskOutput):
 *     called with exactly len(fields) positional arguments it allocates the object and
 *     fills its slots directly, skipping the generated __init__ (which only assigns
 *     them); any other call is passed to cls itself. _fast.py checks that a class is
 *     such a dataclass (no __post_init__, no defaults to apply) before asking.
 *
 * The GIL is held throughout: every call is non-blocking, so the buffers below can be
 * static (one set per process; only the pages a datagram touches become resident). They
 * are shared by every worker thread, so each function copies what it read out of them
 * into bytes objects (which cannot run Python code) before it does anything that could
 * (allocate a GC-tracked object, call `make`) and let another thread in.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_BATCH 64
#define RECV_SIZE 65536

static char rbuf[MAX_BATCH][RECV_SIZE];
static struct mmsghdr rmsgs[MAX_BATCH];
static struct iovec riov[MAX_BATCH];
static struct sockaddr_storage raddrs[MAX_BATCH];

static struct mmsghdr smsgs[MAX_BATCH];
static struct iovec siov[MAX_BATCH];
static struct sockaddr_storage saddrs[MAX_BATCH];

static PyObject *
make_address(const struct sockaddr_storage *ss, socklen_t len)
{
    char host[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        if (inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host)) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(si)", host, (int)ntohs(a->sin_port));
    }
    if (ss->ss_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        if (inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host)) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(siII)", host, (int)ntohs(a->sin6_port),
                             (unsigned int)ntohl(a->sin6_flowinfo),
                             (unsigned int)a->sin6_scope_id);
    }
    PyErr_Format(PyExc_OSError, "recvmmsg: unsupported address family %d", (int)ss->ss_family);
    return NULL;
}

static PyObject *
speedups_recvmmsg(PyObject *module, PyObject *args)
{
    int fd, count;
    PyObject *make = Py_None, *slot = Py_None;
    if (!PyArg_ParseTuple(args, "ii|OO:recvmmsg", &fd, &count, &make, &slot))
        return NULL;
    if (count < 1 || count > MAX_BATCH) {
        PyErr_Format(PyExc_ValueError, "count must be 1..%d, got %d", MAX_BATCH, count);
        return NULL;
    }
    for (int i = 0; i < count; i++) {
        riov[i].iov_base = rbuf[i];
        riov[i].iov_len = RECV_SIZE;
        memset(&rmsgs[i].msg_hdr, 0, sizeof(rmsgs[i].msg_hdr));
        rmsgs[i].msg_hdr.msg_iov = &riov[i];
        rmsgs[i].msg_hdr.msg_iovlen = 1;
        rmsgs[i].msg_hdr.msg_name = &raddrs[i];
        rmsgs[i].msg_hdr.msg_namelen = sizeof(raddrs[i]);
    }
    int n = recvmmsg(fd, rmsgs, (unsigned int)count, MSG_DONTWAIT, NULL);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return PyList_New(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    /* Copy out of the shared buffers before anything that may run Python code (a GC
     * pass on a tuple's allocation, a Python `make`): another worker thread may take the
     * GIL then and call this function. Bytes objects are not GC-tracked: creating them
     * cannot run Python code. */
    struct sockaddr_storage addrs[MAX_BATCH];
    socklen_t alens[MAX_BATCH];
    PyObject *datas[MAX_BATCH];
    for (int i = 0; i < n; i++) {
        alens[i] = rmsgs[i].msg_hdr.msg_namelen;
        if (alens[i] > (socklen_t)sizeof(addrs[i]))
            alens[i] = (socklen_t)sizeof(addrs[i]);
        memcpy(&addrs[i], &raddrs[i], alens[i]);
        datas[i] = PyBytes_FromStringAndSize(rbuf[i], (Py_ssize_t)rmsgs[i].msg_len);
        if (datas[i] == NULL) {
            for (int j = 0; j < i; j++)
                Py_DECREF(datas[j]);
            return NULL;
        }
    }
    int next = 0;          /* datas[next:] are still ours to release */
    PyObject *last = NULL; /* a strong reference: the previous datagram's address */
    PyObject *list = PyList_New(n);
    if (list == NULL)
        goto fail;
    for (int i = 0; i < n; i++) {
        socklen_t alen = alens[i];
        PyObject *addr;
        if (last != NULL && alen == alens[i - 1] && memcmp(&addrs[i], &addrs[i - 1], alen) == 0) {
            addr = last;
            Py_INCREF(addr);
        } else {
            addr = make_address(&addrs[i], alen);
            if (addr == NULL)
                goto fail;
            Py_XDECREF(last);
            last = addr;
            Py_INCREF(last);
        }
        /* from here `addr` and datas[i] are one reference each, given to the item */
        PyObject *data = datas[i];
        next = i + 1;
        PyObject *item;
        if (make != Py_None) {
            PyObject *argv[3] = {slot, addr, data};
            item = PyObject_Vectorcall(make, argv, 3, NULL);
            Py_DECREF(data);
            Py_DECREF(addr);
            if (item == NULL)
                goto fail;
        } else {
            item = PyTuple_New(2);
            if (item == NULL) {
                Py_DECREF(addr);
                Py_DECREF(data);
                goto fail;
            }
            PyTuple_SET_ITEM(item, 0, addr);
            PyTuple_SET_ITEM(item, 1, data);
        }
        PyList_SET_ITEM(list, i, item);
    }
    Py_XDECREF(last);
    return list;
fail:
    for (int j = next; j < n; j++)
        Py_DECREF(datas[j]);
    Py_XDECREF(last);
    Py_XDECREF(list); /* unset items are NULL: list_dealloc skips them */
    return NULL;
}

/* Fill saddrs[k] from a Python address for `family`; 0 if it cannot (no error set). */
static int
parse_address(PyObject *addr, int family, int k, socklen_t *len)
{
    if (!PyTuple_CheckExact(addr))
        return 0;
    Py_ssize_t n = PyTuple_GET_SIZE(addr);
    if (n < 2)
        return 0;
    PyObject *host = PyTuple_GET_ITEM(addr, 0);
    PyObject *port = PyTuple_GET_ITEM(addr, 1);
    if (!PyUnicode_CheckExact(host) || !PyLong_CheckExact(port))
        return 0;
    long p = PyLong_AsLong(port);
    if (p == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (p < 0 || p > 65535)
        return 0;
    const char *h = PyUnicode_AsUTF8(host);
    if (h == NULL) {
        PyErr_Clear();
        return 0;
    }
    memset(&saddrs[k], 0, sizeof(saddrs[k]));
    if (family == AF_INET) {
        if (n != 2)
            return 0;
        struct sockaddr_in *a = (struct sockaddr_in *)&saddrs[k];
        if (inet_pton(AF_INET, h, &a->sin_addr) != 1)
            return 0;
        a->sin_family = AF_INET;
        a->sin_port = htons((unsigned short)p);
        *len = sizeof(*a);
        return 1;
    }
    if (family == AF_INET6) {
        if (n > 4)
            return 0;
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&saddrs[k];
        if (inet_pton(AF_INET6, h, &a->sin6_addr) != 1)
            return 0;
        unsigned long flow = 0, scope = 0;
        if (n >= 3) {
            PyObject *f = PyTuple_GET_ITEM(addr, 2);
            if (!PyLong_CheckExact(f))
                return 0;
            flow = PyLong_AsUnsignedLong(f);
            if (PyErr_Occurred() || flow > 0xfffff) {
                PyErr_Clear();
                return 0;
            }
        }
        if (n == 4) {
            PyObject *s = PyTuple_GET_ITEM(addr, 3);
            if (!PyLong_CheckExact(s))
                return 0;
            scope = PyLong_AsUnsignedLong(s);
            if (PyErr_Occurred() || scope > 0xffffffffUL) {
                PyErr_Clear();
                return 0;
            }
        }
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((unsigned short)p);
        a->sin6_flowinfo = htonl((uint32_t)flow);
        a->sin6_scope_id = (uint32_t)scope;
        *len = sizeof(*a);
        return 1;
    }
    return 0;
}

static PyObject *
speedups_sendmmsg(PyObject *module, PyObject *args)
{
    int fd, family;
    PyObject *items;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "iiOn:sendmmsg", &fd, &family, &items, &start))
        return NULL;
    PyObject *seq = PySequence_Fast(items, "items must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t total = PySequence_Fast_GET_SIZE(seq);
    PyObject **elems = PySequence_Fast_ITEMS(seq);
    Py_ssize_t i = start < 0 ? 0 : start;
    while (i < total) {
        int k = 0;
        Py_ssize_t j = i;
        while (j < total && k < MAX_BATCH) {
            PyObject *pair = elems[j];
            if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2)
                break;
            PyObject *data = PyTuple_GET_ITEM(pair, 1);
            if (!PyBytes_CheckExact(data))
                break;
            socklen_t alen;
            if (!parse_address(PyTuple_GET_ITEM(pair, 0), family, k, &alen))
                break;
            siov[k].iov_base = PyBytes_AS_STRING(data);
            siov[k].iov_len = (size_t)PyBytes_GET_SIZE(data);
            memset(&smsgs[k].msg_hdr, 0, sizeof(smsgs[k].msg_hdr));
            smsgs[k].msg_hdr.msg_iov = &siov[k];
            smsgs[k].msg_hdr.msg_iovlen = 1;
            smsgs[k].msg_hdr.msg_name = &saddrs[k];
            smsgs[k].msg_hdr.msg_namelen = alen;
            k++;
            j++;
        }
        if (k == 0)
            break; /* items[i] is for the caller to send */
        int sent = sendmmsg(fd, smsgs, (unsigned int)k, MSG_DONTWAIT);
        if (sent < 0)
            sent = 0;
        i += sent;
        if (sent < k)
            break; /* the kernel refused items[i]: the caller sends it and sees why */
    }
    Py_DECREF(seq);
    return PyLong_FromSsize_t(i);
}

static PyObject *
speedups_readmany(PyObject *module, PyObject *args)
{
    int fd, count;
    Py_ssize_t size;
    PyObject *make = Py_None, *slot = Py_None;
    if (!PyArg_ParseTuple(args, "iin|OO:readmany", &fd, &count, &size, &make, &slot))
        return NULL;
    if (count < 1 || size < 1 || size > (Py_ssize_t)sizeof(rbuf)) {
        PyErr_Format(PyExc_ValueError, "count must be >= 1 and size 1..%zu", sizeof(rbuf));
        return NULL;
    }
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    for (int i = 0; i < count; i++) {
        ssize_t n = read(fd, rbuf[0], (size_t)size);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || i > 0)
                break;
            Py_DECREF(list);
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        PyObject *data = PyBytes_FromStringAndSize(rbuf[0], n);
        if (data != NULL && make != Py_None && n < size) {
            PyObject *argv[2] = {slot, data};
            PyObject *event = PyObject_Vectorcall(make, argv, 2, NULL);
            Py_DECREF(data);
            data = event;
        }
        if (data == NULL || PyList_Append(list, data) < 0) {
            Py_XDECREF(data);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(data);
        if (n == 0)
            break;
    }
    return list;
}

/* ------------------------------------------------------------------ maker */

#define MAX_FIELDS 8

typedef struct {
    PyObject_HEAD
    PyTypeObject *cls;
    Py_ssize_t nfields;
    Py_ssize_t offsets[MAX_FIELDS];
    vectorcallfunc vectorcall;
} Maker;

static void
maker_dealloc(Maker *self)
{
    Py_XDECREF(self->cls);
    PyObject_Free(self);
}

static PyObject *
maker_vectorcall(Maker *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL || nargs != self->nfields)
        return PyObject_Vectorcall((PyObject *)self->cls, args, nargsf, kwnames);
    PyObject *obj = self->cls->tp_alloc(self->cls, 0);
    if (obj == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < nargs; i++) {
        Py_INCREF(args[i]);
        *(PyObject **)((char *)obj + self->offsets[i]) = args[i];
    }
    return obj;
}

static PyObject *
maker_repr(Maker *self)
{
    return PyUnicode_FromFormat("<sansio_aio._speedups.maker of %s>", self->cls->tp_name);
}

static PyTypeObject MakerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sansio_aio._speedups.maker",
    .tp_basicsize = sizeof(Maker),
    .tp_dealloc = (destructor)maker_dealloc,
    .tp_repr = (reprfunc)maker_repr,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Maker, vectorcall),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "maker(cls, fields): a fast positional constructor of a slotted dataclass.",
};

static PyObject *
speedups_maker(PyObject *module, PyObject *args)
{
    PyTypeObject *cls;
    PyObject *fields;
    if (!PyArg_ParseTuple(args, "O!O!:maker", &PyType_Type, &cls, &PyTuple_Type, &fields))
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(fields);
    if (n < 1 || n > MAX_FIELDS) {
        PyErr_Format(PyExc_ValueError, "maker: 1..%d fields, got %zd", MAX_FIELDS, n);
        return NULL;
    }
    if (cls->tp_itemsize != 0 || cls->tp_dictoffset != 0 || cls->tp_alloc == NULL) {
        PyErr_Format(PyExc_TypeError, "maker: %s is not a slotted class", cls->tp_name);
        return NULL;
    }
    Maker *self = PyObject_New(Maker, &MakerType);
    if (self == NULL)
        return NULL;
    self->cls = NULL;
    self->nfields = n;
    self->vectorcall = (vectorcallfunc)maker_vectorcall;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(fields, i);
        PyObject *descr = PyUnicode_Check(name) ? _PyType_Lookup(cls, name) : NULL;
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type) ||
            ((PyMemberDescrObject *)descr)->d_member->type != T_OBJECT_EX ||
            ((PyMemberDescrObject *)descr)->d_member->flags != 0) {
            PyErr_Format(PyExc_TypeError, "maker: %R is not a writable slot of %s", name,
                         cls->tp_name);
            Py_DECREF(self);
            return NULL;
        }
        self->offsets[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
    }
    Py_INCREF(cls);
    self->cls = cls;
    return (PyObject *)self;
}

static PyMethodDef methods[] = {
    {"recvmmsg", speedups_recvmmsg, METH_VARARGS,
     "recvmmsg(fd, count[, make, slot]) -> list of (address, bytes) or make(slot, address,"
     " bytes): one recvmmsg(2), [] on EAGAIN."},
    {"sendmmsg", speedups_sendmmsg, METH_VARARGS,
     "sendmmsg(fd, family, items, start) -> index of the first (address, bytes) not sent."},
    {"readmany", speedups_readmany, METH_VARARGS,
     "readmany(fd, count, size[, make, slot]) -> list of bytes (or make(slot, bytes) for"
     " uncut reads): read(2) until EAGAIN or count."},
    {"maker", speedups_maker, METH_VARARGS,
     "maker(cls, fields) -> a fast positional constructor of a slotted dataclass."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "sansio_aio._speedups",
    "Batched datagram system calls for the UDP and TUN drivers (optional; see _fast.py).",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&MakerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "MAX_BATCH", MAX_BATCH) < 0 ||
        PyModule_AddIntConstant(m, "RECV_SIZE", RECV_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

# cython: language_level=3, boundscheck=False, wraparound=False
"""Reading several message files in one call, compiled; the twin ``fileread_py`` is the specification.

Why: a store pool job reading a batch (the POP3 read-ahead, search indexing after delivery) made four
system calls per file from Python, and each gave the GIL away and took it back: a thread that wants the
GIL meanwhile (the event loop, after its epoll) is woken when it is released, but the pool thread's
short syscall is back first and takes it again, until the loop's wait times out (the 5 ms switch
interval): RETRs that overlapped a read-ahead job answered in 370 us (median) against 50. Here the
whole batch's open/fstat and then its preads run in two stretches without the GIL; it is taken between
them once, to make the result objects.
"""

import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.errno cimport EINTR, ENOENT, errno
from libc.stdlib cimport free, malloc
from posix.fcntl cimport O_CLOEXEC, O_RDONLY
from posix.fcntl cimport open as c_open
from posix.stat cimport fstat, struct_stat
from posix.unistd cimport close, pread


def read_files(paths, Py_ssize_t limit):
    cdef Py_ssize_t n = len(paths)
    cdef Py_ssize_t i
    names = [os.fsencode(p) for p in paths]
    cdef const char** cnames = <const char**>malloc(max(n, 1) * sizeof(char*))
    cdef int* fds = <int*>malloc(max(n, 1) * sizeof(int))
    cdef int* errs = <int*>malloc(max(n, 1) * sizeof(int))
    cdef Py_ssize_t* sizes = <Py_ssize_t*>malloc(max(n, 1) * sizeof(Py_ssize_t))
    cdef char** bufs = <char**>malloc(max(n, 1) * sizeof(char*))
    cdef struct_stat st
    cdef Py_ssize_t got, r
    cdef int fd
    if cnames == NULL or fds == NULL or errs == NULL or sizes == NULL or bufs == NULL:
        free(cnames); free(fds); free(errs); free(sizes); free(bufs)
        raise MemoryError()
    out = [None] * n
    try:
        for i in range(n):
            cnames[i] = <const char*>(<bytes>names[i])
            fds[i] = -1
            errs[i] = 0
            bufs[i] = NULL
        with nogil:
            for i in range(n):
                fd = c_open(cnames[i], O_RDONLY | O_CLOEXEC)
                if fd < 0:
                    errs[i] = errno
                    continue
                if fstat(fd, &st) < 0:
                    errs[i] = errno
                    close(fd)
                    continue
                fds[i] = fd
                sizes[i] = st.st_size
                if 0 <= limit < sizes[i]:
                    sizes[i] = limit
        for i in range(n):
            if fds[i] >= 0:
                data = PyBytes_FromStringAndSize(NULL, sizes[i])
                out[i] = data
                bufs[i] = PyBytes_AS_STRING(data)
        with nogil:
            for i in range(n):
                if fds[i] < 0:
                    continue
                got = 0
                while got < sizes[i]:
                    r = pread(fds[i], bufs[i] + got, sizes[i] - got, got)
                    if r < 0:
                        if errno == EINTR:
                            continue
                        errs[i] = errno
                        break
                    if r == 0:  # the file shrank: to its new end
                        break
                    got += r
                close(fds[i])
                fds[i] = -1
                sizes[i] = got
        for i in range(n):
            if errs[i] == ENOENT:
                out[i] = None
            elif errs[i]:
                raise OSError(errs[i], os.strerror(errs[i]), paths[i])
            elif out[i] is not None and len(out[i]) != sizes[i]:
                out[i] = out[i][:sizes[i]]
        return out
    finally:
        for i in range(n):
            if fds[i] >= 0:  # only when making a result object failed between the two stretches
                close(fds[i])
        free(cnames); free(fds); free(errs); free(sizes); free(bufs)

# cython: language_level=3
"""Search index hot loops, compiled. The twin ``search_py`` is the specification."""

from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.unicode cimport PyUnicode_Find


def terms_containing(str word, list vocab):
    cdef list out = []
    cdef Py_ssize_t i, n = PyList_GET_SIZE(vocab)
    cdef object t
    for i in range(n):
        t = <object>PyList_GET_ITEM(vocab, i)
        if PyUnicode_Find(t, word, 0, len(<str>t), 1) >= 0:
            out.append(i)
    return out


def filter_containing(str word, list vocab, ids):
    cdef list out = []
    cdef Py_ssize_t n = PyList_GET_SIZE(vocab)
    cdef Py_ssize_t i
    cdef object t
    for i in ids:
        if i < 0 or i >= n:
            raise IndexError("term id out of range")
        t = <object>PyList_GET_ITEM(vocab, i)
        if PyUnicode_Find(t, word, 0, len(<str>t), 1) >= 0:
            out.append(i)
    return out

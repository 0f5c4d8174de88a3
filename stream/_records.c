/* Kafka records framed in C: the loop of `stream.bulk_send._fill`.
 *
 * A record of a v2 record batch, without headers, is
 *
 *     varint(length) | attributes (0) | varint(timestamp delta) | varint(offset delta)
 *     | varint(len(key)) | key | varint(len(value)) | value | varint(0 headers)
 *
 * with Kafka's zigzag varints. `stream.bulk_send` writes a column of such records into the open
 * batch of a partition; in Python each record costs about 1-2 us (a join and a few lookups), here
 * a length check and two copies. The bytes are those of the Python loop, which
 * `tests/unit/test_bulk_send.py` checks against kafka-python's own `append`.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Zigzag varint of a non-negative value. */
static Py_ssize_t varint_size(Py_ssize_t value) {
    uint64_t v = (uint64_t)value << 1;
    Py_ssize_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static char *write_varint(char *out, Py_ssize_t value) {
    uint64_t v = (uint64_t)value << 1;
    while (v >= 0x80) {
        *out++ = (char)((v & 0x7f) | 0x80);
        v >>= 7;
    }
    *out++ = (char)v;
    return out;
}

PyDoc_STRVAR(frame_doc,
             "frame(head, offset, keys, values, start, room) -> (bytes, stop, largest)\n\n"
             "Records ``start..stop`` of ``keys`` / ``values`` (bytes), framed one after another while\n"
             "they fit in ``room`` bytes: ``head`` (attributes and timestamp delta) then the offset\n"
             "delta from ``offset`` on, the key, the value, no headers. ``largest`` is the size of the\n"
             "largest record written (0 when none fits).");

static PyObject *frame(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer head;
    Py_ssize_t offset, start, room;
    PyObject *keys_obj, *values_obj;
    if (!PyArg_ParseTuple(args, "y*nOOnn", &head, &offset, &keys_obj, &values_obj, &start, &room)) return NULL;
    PyObject *result = NULL, *keys = NULL, *values = NULL, *out = NULL;
    keys = PySequence_Fast(keys_obj, "keys must be a sequence");
    values = keys ? PySequence_Fast(values_obj, "values must be a sequence") : NULL;
    if (values == NULL) goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(keys);
    if (PySequence_Fast_GET_SIZE(values) != n) {
        PyErr_Format(PyExc_ValueError, "%zd keys but %zd values", n, PySequence_Fast_GET_SIZE(values));
        goto done;
    }
    if (start < 0 || offset < 0) {
        PyErr_SetString(PyExc_ValueError, "start and offset must not be negative");
        goto done;
    }
    PyObject **k = PySequence_Fast_ITEMS(keys), **v = PySequence_Fast_ITEMS(values);
    /* First pass: how many records fit, and how many bytes they take. */
    Py_ssize_t used = 0, largest = 0, stop = start;
    for (; stop < n; stop++) {
        if (!PyBytes_Check(k[stop]) || !PyBytes_Check(v[stop])) {
            PyErr_Format(PyExc_TypeError, "record %zd: keys and values must be bytes", stop);
            goto done;
        }
        Py_ssize_t key_len = PyBytes_GET_SIZE(k[stop]), value_len = PyBytes_GET_SIZE(v[stop]);
        Py_ssize_t body = head.len + varint_size(offset + stop - start) + varint_size(key_len) + key_len +
                          varint_size(value_len) + value_len + 1;
        Py_ssize_t need = varint_size(body) + body;
        if (used + need > room) break;
        used += need;
        if (need > largest) largest = need;
    }
    out = PyBytes_FromStringAndSize(NULL, used);
    if (out == NULL) goto done;
    char *p = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = start; i < stop; i++) {
        Py_ssize_t key_len = PyBytes_GET_SIZE(k[i]), value_len = PyBytes_GET_SIZE(v[i]);
        Py_ssize_t delta = offset + i - start;
        Py_ssize_t body = head.len + varint_size(delta) + varint_size(key_len) + key_len + varint_size(value_len) +
                          value_len + 1;
        p = write_varint(p, body);
        memcpy(p, head.buf, head.len);
        p += head.len;
        p = write_varint(p, delta);
        p = write_varint(p, key_len);
        memcpy(p, PyBytes_AS_STRING(k[i]), key_len);
        p += key_len;
        p = write_varint(p, value_len);
        memcpy(p, PyBytes_AS_STRING(v[i]), value_len);
        p += value_len;
        *p++ = 0; /* no headers */
    }
    result = Py_BuildValue("Onn", out, stop, largest);
done:
    Py_XDECREF(out);
    Py_XDECREF(keys);
    Py_XDECREF(values);
    PyBuffer_Release(&head);
    return result;
}

static PyMethodDef methods[] = {
    {"frame", frame, METH_VARARGS, frame_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "stream._records", "Kafka records framed in C.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__records(void) { return PyModule_Create(&module); }

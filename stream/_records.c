/* Kafka records framed in C: the loop of `stream.bulk_send._fill`.
 *
 * A record of a v2 record batch, without headers, is
 *
 *     varint(length) | attributes (0) | varint(timestamp delta) | varint(offset delta)
 *     | varint(len(key)) | key | varint(len(value)) | value | varint(0 headers)
 *
 * with Kafka's zigzag varints. `stream.bulk_send` writes a column of such records into the open
 * batch of a partition; in Python each record costs about 1-2 us (a join and a few lookups), here
 * a length check and a copy straight into the batch's buffer. The bytes are those of the Python
 * loop, which `tests/unit/test_bulk_send.py` checks against kafka-python's own `append`.
 *
 * A key may be a str, written as its UTF-8 (the forecasts' keys are their item ids: no bytes
 * object per record), and `murmur2` hashes a column of keys as Kafka's default partitioner does
 * (`stream.partitioner`; in numpy it took about as long as framing the records).
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

/* A key's bytes: a bytes object's own, or a str's UTF-8 (which CPython keeps with the str, so an
 * ASCII id costs nothing). NULL with an exception set for anything else. */
static const char *key_bytes(PyObject *key, Py_ssize_t *len) {
    if (PyBytes_Check(key)) {
        *len = PyBytes_GET_SIZE(key);
        return PyBytes_AS_STRING(key);
    }
    if (PyUnicode_Check(key)) return PyUnicode_AsUTF8AndSize(key, len);
    PyErr_Format(PyExc_TypeError, "keys must be bytes or str, not %.100s", Py_TYPE(key)->tp_name);
    return NULL;
}

/* Kafka's murmur2 (the Java client's Utils.murmur2) of `len` bytes. */
static uint32_t murmur2_of(const unsigned char *data, Py_ssize_t len) {
    const uint32_t m = 0x5bd1e995;
    uint32_t h = 0x9747b28cu ^ (uint32_t)len;
    Py_ssize_t blocks = len / 4;
    for (Py_ssize_t i = 0; i < blocks; i++) {
        const unsigned char *b = data + 4 * i;
        uint32_t k = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
        k *= m;
        k ^= k >> 24;
        k *= m;
        h *= m;
        h ^= k;
    }
    const unsigned char *tail = data + 4 * blocks;
    switch (len % 4) {
    case 3:
        h ^= (uint32_t)tail[2] << 16;
        /* fall through */
    case 2:
        h ^= (uint32_t)tail[1] << 8;
        /* fall through */
    case 1:
        h ^= (uint32_t)tail[0];
        h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return h;
}

PyDoc_STRVAR(murmur2_doc,
             "murmur2(keys) -> bytes\n\n"
             "Kafka's murmur2 hash of each key (bytes, or str hashed as its UTF-8), as native uint32\n"
             "values one after another.");

static PyObject *murmur2(PyObject *self, PyObject *keys_obj) {
    (void)self;
    PyObject *keys = PySequence_Fast(keys_obj, "keys must be a sequence");
    if (keys == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(keys);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(uint32_t));
    if (out != NULL) {
        uint32_t *h = (uint32_t *)PyBytes_AS_STRING(out);
        PyObject **k = PySequence_Fast_ITEMS(keys);
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t len;
            const char *data = key_bytes(k[i], &len);
            if (data == NULL) {
                Py_CLEAR(out);
                break;
            }
            h[i] = murmur2_of((const unsigned char *)data, len);
        }
    }
    Py_DECREF(keys);
    return out;
}

PyDoc_STRVAR(longest_doc,
             "longest(keys, values) -> (key_size, value_size)\n\n"
             "The largest key (bytes, or str as its UTF-8) and the largest value (bytes), in bytes:\n"
             "every record of the columns is at most that large.");

static PyObject *longest(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *keys_obj, *values_obj;
    if (!PyArg_ParseTuple(args, "OO", &keys_obj, &values_obj)) return NULL;
    PyObject *result = NULL, *keys = NULL, *values = NULL;
    keys = PySequence_Fast(keys_obj, "keys must be a sequence");
    values = keys ? PySequence_Fast(values_obj, "values must be a sequence") : NULL;
    if (values == NULL) goto done;
    Py_ssize_t key_size = 0, value_size = 0, len;
    PyObject **k = PySequence_Fast_ITEMS(keys), **v = PySequence_Fast_ITEMS(values);
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(keys); i++) {
        if (key_bytes(k[i], &len) == NULL) goto done;
        if (len > key_size) key_size = len;
    }
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(values); i++) {
        if (!PyBytes_Check(v[i])) {
            PyErr_Format(PyExc_TypeError, "record %zd: values must be bytes", i);
            goto done;
        }
        if (PyBytes_GET_SIZE(v[i]) > value_size) value_size = PyBytes_GET_SIZE(v[i]);
    }
    result = Py_BuildValue("nn", key_size, value_size);
done:
    Py_XDECREF(keys);
    Py_XDECREF(values);
    return result;
}

/* The records `start..stop` of the columns that fit in `room` bytes: sets `*stop`, their bytes
 * `*used` and the largest record's size `*largest`; -1 with an exception set on a bad column. */
static int measure(const Py_buffer *head, Py_ssize_t offset, PyObject **k, PyObject **v, Py_ssize_t n,
                   Py_ssize_t start, Py_ssize_t room, Py_ssize_t *stop, Py_ssize_t *used, Py_ssize_t *largest) {
    *used = 0;
    *largest = 0;
    Py_ssize_t i = start;
    for (; i < n; i++) {
        if (!PyBytes_Check(v[i])) {
            PyErr_Format(PyExc_TypeError, "record %zd: values must be bytes", i);
            return -1;
        }
        Py_ssize_t key_len, value_len = PyBytes_GET_SIZE(v[i]);
        if (key_bytes(k[i], &key_len) == NULL) return -1;
        Py_ssize_t body = head->len + varint_size(offset + i - start) + varint_size(key_len) + key_len +
                          varint_size(value_len) + value_len + 1;
        Py_ssize_t need = varint_size(body) + body;
        if (*used + need > room) break;
        *used += need;
        if (need > *largest) *largest = need;
    }
    *stop = i;
    return 0;
}

/* Write the records `start..stop` (measured by `measure`) at `p`. */
static void write_records(char *p, const Py_buffer *head, Py_ssize_t offset, PyObject **k, PyObject **v,
                          Py_ssize_t start, Py_ssize_t stop) {
    for (Py_ssize_t i = start; i < stop; i++) {
        Py_ssize_t key_len, value_len = PyBytes_GET_SIZE(v[i]);
        const char *key = key_bytes(k[i], &key_len); /* not NULL: `measure` read it */
        Py_ssize_t delta = offset + i - start;
        Py_ssize_t body = head->len + varint_size(delta) + varint_size(key_len) + key_len + varint_size(value_len) +
                          value_len + 1;
        p = write_varint(p, body);
        memcpy(p, head->buf, head->len);
        p += head->len;
        p = write_varint(p, delta);
        p = write_varint(p, key_len);
        memcpy(p, key, key_len);
        p += key_len;
        p = write_varint(p, value_len);
        memcpy(p, PyBytes_AS_STRING(v[i]), value_len);
        p += value_len;
        *p++ = 0; /* no headers */
    }
}

PyDoc_STRVAR(frame_into_doc,
             "frame_into(buffer, head, offset, keys, values, start, room) -> (stop, largest)\n\n"
             "Records ``start..stop`` of ``keys`` (bytes, or str written as UTF-8) / ``values`` (bytes),\n"
             "framed one after another at the end of ``buffer`` (a bytearray: a record batch's) while\n"
             "they fit in ``room`` bytes: ``head`` (attributes and timestamp delta) then the offset\n"
             "delta from ``offset`` on, the key, the value, no headers. ``largest`` is the size of the\n"
             "largest record written (0 when none fits).");

static PyObject *frame_into(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer head;
    Py_ssize_t offset, start, room;
    PyObject *into, *keys_obj, *values_obj;
    if (!PyArg_ParseTuple(args, "O!y*nOOnn", &PyByteArray_Type, &into, &head, &offset, &keys_obj, &values_obj,
                          &start, &room))
        return NULL;
    PyObject *result = NULL, *keys = NULL, *values = NULL;
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
    Py_ssize_t stop, used, largest;
    if (measure(&head, offset, k, v, n, start, room, &stop, &used, &largest) < 0) goto done;
    /* Straight into the batch's buffer: no bytes object to make, then copy and free. */
    Py_ssize_t at = PyByteArray_GET_SIZE(into);
    if (PyByteArray_Resize(into, at + used) < 0) goto done;
    write_records(PyByteArray_AS_STRING(into) + at, &head, offset, k, v, start, stop);
    result = Py_BuildValue("nn", stop, largest);
done:
    Py_XDECREF(keys);
    Py_XDECREF(values);
    PyBuffer_Release(&head);
    return result;
}

static PyMethodDef methods[] = {
    {"frame_into", frame_into, METH_VARARGS, frame_into_doc},
    {"murmur2", murmur2, METH_O, murmur2_doc},
    {"longest", longest, METH_VARARGS, longest_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "stream._records", "Kafka records framed, and their keys hashed, in C.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__records(void) { return PyModule_Create(&module); }

/* Forecast messages of a batch, written in C: the hot path of publishing.
 *
 * `stream.publish.encode_forecasts` builds one JSON message per item:
 *
 *     {"item_id":"<id>"<middle><values>}
 *
 * where <middle> is the batch's common fields (the same bytes for every message) and <values> the
 * item's [H][Q] numbers, each rounded to thousandths. In Python that is about 1.5 us a message,
 * most of it the numbers' text (`stream/values_json.py`); here it is a copy and a few integer
 * divisions per number. The text is byte for byte what the Python path writes (orjson's shortest
 * form of the rounded float: "7.0", "12.5", "0.001"), which the unit tests check.
 *
 * Rows this code does not write are left to Python and named in the result: an item id that JSON
 * must escape (a quote, a backslash, a control character) or that is not valid text, and values
 * outside [0, 1e12) units or NaN, which orjson writes (exponents, "NaN" as null, the sign).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Scaled values (thousandths) below this are written here; tested against orjson up to it. */
#define LIMIT 1e15

/* The text of 0..999 (up to 3 digits) and of a fraction .000..999 (a point, then at least one
 * decimal and no trailing zeros: .0, .5, .25, .125), 4 bytes each, with their lengths. */
static char whole_text[1000][4], frac_text[1000][4];
static unsigned char whole_len[1000], frac_len[1000];

static void build_tables(void) {
    for (int k = 0; k < 1000; k++) {
        whole_len[k] = (unsigned char)snprintf(whole_text[k], 4, "%d", k);
        char f[8];
        snprintf(f, sizeof f, ".%03d", k);
        int len = 4;
        while (len > 2 && f[len - 1] == '0') len--;
        memcpy(frac_text[k], f, 4);
        frac_len[k] = (unsigned char)len;
    }
}

static char *write_number(char *out, int64_t k) {
    int64_t whole = k / 1000;
    int frac = (int)(k % 1000);
    if (whole < 1000) { /* almost every demand figure */
        memcpy(out, whole_text[whole], 4);
        out += whole_len[whole];
    } else {
        char digits[20];
        int n = 0;
        do {
            digits[n++] = (char)('0' + whole % 10);
            whole /= 10;
        } while (whole > 0);
        while (n > 0) *out++ = digits[--n];
    }
    memcpy(out, frac_text[frac], 4);
    return out + frac_len[frac];
}

/* The id's UTF-8 bytes when JSON needs no escape for them, else NULL (error cleared). */
static const char *plain_id(PyObject *id, Py_ssize_t *len) {
    if (!PyUnicode_Check(id)) return NULL;
    const char *s = PyUnicode_AsUTF8AndSize(id, len);
    if (s == NULL) {
        PyErr_Clear();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < *len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == '"' || c == '\\') return NULL;
    }
    return s;
}

static int row_fits(const double *v, Py_ssize_t cells) {
    for (Py_ssize_t i = 0; i < cells; i++)
        if (!(v[i] >= 0.0 && v[i] < LIMIT)) return 0; /* false for NaN too */
    return 1;
}

PyDoc_STRVAR(messages_doc,
             "messages(item_ids, middle, scaled, horizons, quantiles) -> (list, left)\n\n"
             "One JSON message per item from ``scaled`` (C-contiguous float64 [N, H, Q], the values\n"
             "times 1000, already rounded to integers). ``left`` lists the rows left to the caller,\n"
             "whose places in the list hold None.");

static PyObject *messages(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ids_obj;
    Py_buffer middle, scaled;
    Py_ssize_t h, q;
    if (!PyArg_ParseTuple(args, "Oy*y*nn", &ids_obj, &middle, &scaled, &h, &q)) return NULL;
    PyObject *result = NULL, *out = NULL, *left = NULL, *ids = NULL;
    char *buf = NULL;
    ids = PySequence_Fast(ids_obj, "item_ids must be a sequence");
    if (ids == NULL) goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(ids);
    if (h <= 0 || q <= 0 || scaled.len != (Py_ssize_t)(n * h * q * sizeof(double))) {
        PyErr_Format(PyExc_ValueError, "scaled has %zd bytes, expected %zd items x %zd x %zd float64",
                     scaled.len, n, h, q);
        goto done;
    }
    const double *values = (const double *)scaled.buf;
    const Py_ssize_t cells = h * q;
    /* Everything but the id: the prefix, the middle, each number at its longest (a separator, 13
     * digits, a point, 3 decimals), the brackets of the rows and the message's closing brace. */
    const Py_ssize_t fixed = 16 + middle.len + cells * 18 + 2 * h + 4;
    Py_ssize_t capacity = fixed + 256;
    buf = PyMem_Malloc(capacity);
    out = PyList_New(n);
    left = PyList_New(0);
    if (buf == NULL || out == NULL || left == NULL) {
        if (buf == NULL) PyErr_NoMemory();
        goto done;
    }
    PyObject **items = PySequence_Fast_ITEMS(ids);
    for (Py_ssize_t i = 0; i < n; i++) {
        const double *v = values + i * cells;
        Py_ssize_t id_len;
        const char *id = plain_id(items[i], &id_len);
        if (id == NULL || !row_fits(v, cells)) {
            PyObject *index = PyLong_FromSsize_t(i);
            int failed = index == NULL || PyList_Append(left, index) < 0;
            Py_XDECREF(index);
            if (failed) goto done;
            Py_INCREF(Py_None);
            PyList_SET_ITEM(out, i, Py_None);
            continue;
        }
        if (fixed + id_len > capacity) {
            capacity = fixed + id_len;
            char *bigger = PyMem_Realloc(buf, capacity);
            if (bigger == NULL) {
                PyErr_NoMemory();
                goto done;
            }
            buf = bigger;
        }
        char *p = buf;
        memcpy(p, "{\"item_id\":\"", 12);
        p += 12;
        memcpy(p, id, id_len);
        p += id_len;
        *p++ = '"';
        memcpy(p, middle.buf, middle.len);
        p += middle.len;
        *p++ = '[';
        for (Py_ssize_t r = 0; r < h; r++) {
            if (r > 0) *p++ = ',';
            *p++ = '[';
            for (Py_ssize_t c = 0; c < q; c++) {
                if (c > 0) *p++ = ',';
                p = write_number(p, (int64_t)v[r * q + c]);
            }
            *p++ = ']';
        }
        *p++ = ']';
        *p++ = '}';
        PyObject *message = PyBytes_FromStringAndSize(buf, p - buf);
        if (message == NULL) goto done;
        PyList_SET_ITEM(out, i, message);
    }
    result = PyTuple_Pack(2, out, left);
done:
    PyMem_Free(buf);
    Py_XDECREF(out);
    Py_XDECREF(left);
    Py_XDECREF(ids);
    PyBuffer_Release(&middle);
    PyBuffer_Release(&scaled);
    return result;
}

static PyMethodDef methods[] = {
    {"messages", messages, METH_VARARGS, messages_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "stream._messages", "Forecast messages of a batch, written in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__messages(void) {
    build_tables();
    return PyModule_Create(&module);
}

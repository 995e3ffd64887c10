/*
 * Compiled twin of the keyed pause draw in megatron_pause/pause.py.
 *
 * Why C: the online dataset inserts pauses into every sample it serves. In numpy that takes a
 * dozen array calls per sample, and their fixed per-call cost is most of a fetch. In C the draw
 * and the fill are a few microseconds for a 2048-token window.
 *
 * The numpy implementation in pause.py is the definition. This file must give bit-identical
 * results; tests/test_pause.py compares the two across sizes, fractions and keys. pause.py
 * falls back to numpy when this module was not built (no C compiler at install time).
 *
 * The draw, for `k` of `total` slots under a 64-bit `key`:
 *   - draw i (i = 0, 1, ...) is splitmix64(key + (i + 1) * 0x9E3779B97F4A7C15);
 *   - a draw v picks slot floor(v * total / 2^64), unless the low 64 bits of v * total fall
 *     below (2^64 - total) mod total, in which case it is skipped (Lemire's method: exact, so
 *     every slot is equally likely, with no division per draw);
 *   - slots are drawn until `m` distinct ones have been seen, and the distinct ones are the
 *     subset. By symmetry that is a uniformly random m-subset;
 *   - m = k, or m = total - k and the complement is taken when k > total / 2 (fewer draws).
 *
 * The GIL is held throughout: a call is a few microseconds, less than handing the GIL over and
 * waiting to get it back could cost.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const uint64_t GOLDEN = 0x9E3779B97F4A7C15ULL;
/* The numpy twin computes the 128-bit product from 32-bit halves, which needs total < 2^32. */
static const uint64_t MAX_SLOTS = 1ULL << 32;

static inline uint64_t splitmix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

/* Marks the chosen slots with 1 in mask[0:total] (which must start zeroed). */
static void draw_slots(uint8_t *mask, uint64_t total, uint64_t k, uint64_t key) {
    int complement = 2 * k > total;
    uint64_t m = complement ? total - k : k;
    if (m > 0) {
        uint64_t threshold = (0 - total) % total; /* (2^64 - total) mod total */
        uint64_t got = 0, counter = 0;
        while (got < m) {
            __uint128_t product = (__uint128_t)splitmix64(key + (++counter) * GOLDEN) * total;
            if ((uint64_t)product < threshold) continue;
            uint8_t *slot = mask + (uint64_t)(product >> 64);
            got += !*slot;
            *slot = 1;
        }
    }
    if (complement) {
        for (uint64_t i = 0; i < total; i++) mask[i] ^= 1;
    }
}

static int get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *name) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        return -1;
    }
    if (view->ndim != 1) {
        PyErr_Format(PyExc_ValueError, "%s must be 1-d", name);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* The struct-module type letter of a buffer, without its byte-order prefix ('B' if none given). A
   non-native order ('<' on a big-endian machine, '>' or '!') keeps its prefix and so matches no letter. */
static char type_code(const Py_buffer *view) {
    const char *fmt = view->format ? view->format : "B";
    if (*fmt == '@' || *fmt == '=' || (*fmt == '<' && PY_LITTLE_ENDIAN)) fmt++;
    return *fmt;
}

/* fill_pause_mask(mask: writable bool/uint8 buffer, k: int, key: int) */
static PyObject *fill_pause_mask(PyObject *self, PyObject *args) {
    PyObject *mask_obj;
    unsigned long long k, key;
    if (!PyArg_ParseTuple(args, "OKK", &mask_obj, &k, &key)) return NULL;
    Py_buffer mask;
    if (get_buffer(mask_obj, &mask, 1, "mask") < 0) return NULL;
    if (mask.itemsize != 1 || k > (unsigned long long)mask.shape[0]) {
        PyBuffer_Release(&mask);
        PyErr_SetString(PyExc_ValueError, "mask must be a 1-byte buffer with at least k slots");
        return NULL;
    }
    uint64_t total = (uint64_t)mask.shape[0];
    if (total >= MAX_SLOTS) {
        PyBuffer_Release(&mask);
        PyErr_SetString(PyExc_ValueError, "at most 2^32 - 1 pause slots");
        return NULL;
    }
    memset(mask.buf, 0, total);
    draw_slots((uint8_t *)mask.buf, total, k, key);
    PyBuffer_Release(&mask);
    Py_RETURN_NONE;
}

/* out[i] = pause_id on the marked slots, else the next token; one loop per token type so the
   type dispatch stays out of the loop. */
#define FILL(T)                                                                                   \
    {                                                                                             \
        const T *src = (const T *)tokens;                                                         \
        for (uint64_t i = 0; i < keep; i++) out[i] = mask[i] ? pause_id : (int64_t)*src++;        \
    }

static void fill(int64_t *out, uint64_t keep, const uint8_t *mask, const void *tokens, Py_ssize_t itemsize,
                 int is_signed, int64_t pause_id) {
    switch (itemsize * (is_signed ? -1 : 1)) {
    case 1: FILL(uint8_t) break;
    case -1: FILL(int8_t) break;
    case 2: FILL(uint16_t) break;
    case -2: FILL(int16_t) break;
    case 4: FILL(uint32_t) break;
    case -4: FILL(int32_t) break;
    case 8: FILL(uint64_t) break;
    default: FILL(int64_t) break;
    }
}

/* insert_pauses(out: writable int64 buffer, tokens: integer buffer, k: int, pause_id: int, key: int)
   writes the first len(out) slots of tokens with k pauses inserted (len(out) <= len(tokens) + k). */
static PyObject *insert_pauses(PyObject *self, PyObject *args) {
    PyObject *out_obj, *tokens_obj;
    unsigned long long k, key;
    long long pause_id;
    if (!PyArg_ParseTuple(args, "OOKLK", &out_obj, &tokens_obj, &k, &pause_id, &key)) return NULL;
    Py_buffer out, tokens;
    if (get_buffer(out_obj, &out, 1, "out") < 0) return NULL;
    if (get_buffer(tokens_obj, &tokens, 0, "tokens") < 0) {
        PyBuffer_Release(&out);
        return NULL;
    }
    char fmt = type_code(&tokens), out_fmt = type_code(&out);
    /* fmt != 0: strchr would find the string's terminator. */
    int is_signed = fmt && strchr("bhilq", fmt) != NULL;
    int is_integer = is_signed || (fmt && strchr("BHILQ", fmt) != NULL);
    uint64_t n = (uint64_t)tokens.shape[0], total = n + k, keep = (uint64_t)out.shape[0];
    const char *problem = NULL;
    if (!is_integer || !(tokens.itemsize == 1 || tokens.itemsize == 2 || tokens.itemsize == 4 || tokens.itemsize == 8)) {
        problem = "tokens must be an integer array";
    } else if (out.itemsize != 8 || !(out_fmt && strchr("lq", out_fmt))) {
        problem = "out must be an int64 array";
    } else if (total >= MAX_SLOTS) {
        problem = "at most 2^32 - 1 pause slots";
    } else if (keep > total) {
        problem = "out is longer than tokens plus pauses";
    }
    uint8_t *mask = problem ? NULL : calloc(total ? total : 1, 1);
    if (!problem && !mask) problem = "out of memory";
    if (problem) {
        PyBuffer_Release(&out);
        PyBuffer_Release(&tokens);
        PyErr_SetString(PyExc_ValueError, problem);
        return NULL;
    }
    draw_slots(mask, total, k, key);
    fill((int64_t *)out.buf, keep, mask, tokens.buf, tokens.itemsize, is_signed, (int64_t)pause_id);
    free(mask);
    PyBuffer_Release(&out);
    PyBuffer_Release(&tokens);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"fill_pause_mask", fill_pause_mask, METH_VARARGS, "Mark a keyed uniformly random k-subset of mask's slots."},
    {"insert_pauses", insert_pauses, METH_VARARGS, "Insert k keyed pauses into tokens, writing the first len(out) slots."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pause_kernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__pause_kernels(void) { return PyModule_Create(&module); }

/* ASCII text for the C fast paths, written once for both: the decoding one
   (transforms/_flowscan.c) and the counting one (transforms/counting/_scan.c).
   A Span is a run of bytes inside a str or bytes object that the caller
   holds; its decimal digits are read as a number, and it is copied into a
   new str. Static inline, so each extension compiles its own copy; setup.py
   lists this header in both extensions' `depends`, so that a change to it
   rebuilds both. */

#ifndef VPC_FLOW_PEERS_ASCII_TEXT_H
#define VPC_FLOW_PEERS_ASCII_TEXT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
  const char *text;
  Py_ssize_t length;
} Span;

static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* The value of `length` decimal digits in *out; 0 when a byte is not a digit.
   At most 18 digits, so that the value fits an int64. */
static inline int decimal_value(const char *digits, Py_ssize_t length, int64_t *out) {
  int64_t value = 0;
  for (Py_ssize_t i = 0; i < length; i++) {
    if (!is_digit((unsigned char)digits[i])) return 0;
    value = value * 10 + (digits[i] - '0');
  }
  *out = value;
  return 1;
}

/* A new str holding `length` bytes the caller knows to be ASCII, or NULL
   with an exception set. */
static inline PyObject *ascii_str(const char *text, Py_ssize_t length) {
  PyObject *str = PyUnicode_New(length, 127);
  if (str != NULL) memcpy(PyUnicode_DATA(str), text, (size_t)length);
  return str;
}

#endif

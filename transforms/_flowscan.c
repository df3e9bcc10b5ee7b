/* The decoding fast paths in C: CloudWatch Logs subscription messages to
   flow log lines and their log events' timestamps (data_message_events),
   and a block of a flow log file's text to its lines (plain_ascii_lines).
   The counting fast path is transforms/counting/_scan.c; what the two share
   (spans of ASCII text, digits, str) is in _ascii_text.h. */

#include "_ascii_text.h"
#include <stdlib.h>

/* ---- data_message_events: a CloudWatch Logs subscription message's events ----

   data_message_events(payload: bytes) -> (tuple of str, bytes), or None

   The "message" and the "timestamp" of every log event of a DATA_MESSAGE,
   read straight from the JSON text, without building the events' dicts
   (json_loads, orjson, builds them all and sizes a parse buffer of about
   twelve times the message). Only a strict subset of JSON is read here:
   ASCII throughout, strings without backslash escapes or control characters,
   integers of at most 19 digits, nesting at most 64 deep, the top object
   with exactly one "messageType", "DATA_MESSAGE", and one "logEvents", an
   array of objects each with exactly one "message", a string, and exactly
   one "timestamp", a non-negative integer of at most 18 digits. Such a text
   is valid JSON whose parse gives these very messages and timestamps. The
   timestamps come as one bytes object of native int64s (elements.LogBatch's
   event_times), one per line.
   Anything else, valid JSON or not, gives None: the Python path
   (decode.decode_subscription_message) parses it and decides. */

enum { MAX_JSON_DEPTH = 64 };

typedef struct {
  const unsigned char *p, *end;
  int depth;
} Json;

static inline void json_space(Json *j) {
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t')) j->p++;
}

static inline int json_take(Json *j, unsigned char c) {
  json_space(j);
  if (j->p < j->end && *j->p == c) {
    j->p++;
    return 1;
  }
  return 0;
}

/* A string of printable ASCII without escapes; its content in *span. */
static int json_string(Json *j, Span *span) {
  json_space(j);
  if (j->p >= j->end || *j->p != '"') return 0;
  const unsigned char *begin = j->p + 1;
  const unsigned char *close = memchr(begin, '"', (size_t)(j->end - begin));
  if (close == NULL) return 0;
  unsigned unusual = 0;  /* branch-free, so that the compiler vectorises it */
  for (const unsigned char *c = begin; c < close; c++)
    unusual |= (unsigned)(*c == '\\') | (unsigned)(*c < 0x20) | (unsigned)(*c >= 0x80);
  if (unusual) return 0;
  span->text = (const char *)begin;
  span->length = close - begin;
  j->p = close + 1;
  return 1;
}

/* Python reads an integer of more than 4300 digits (PYTHONINTMAXSTRDIGITS,
   640 at least) as an error, and orjson none beyond 64 bits: an integer
   longer than this is left to the Python path. */
enum { MAX_INTEGER_DIGITS = 19 };

static int json_number(Json *j) {
  const unsigned char *p = j->p, *e = j->end;
  if (p < e && *p == '-') p++;
  if (p >= e) return 0;
  const unsigned char *digits = p;
  if (*p == '0') {
    p++;
  } else if (*p >= '1' && *p <= '9') {
    while (p < e && is_digit(*p)) p++;
  } else {
    return 0;
  }
  int integer = p >= e || (*p != '.' && *p != 'e' && *p != 'E');
  if (integer && p - digits > MAX_INTEGER_DIGITS) return 0;
  if (p < e && *p == '.') {
    p++;
    if (p >= e || !is_digit(*p)) return 0;
    while (p < e && is_digit(*p)) p++;
  }
  if (p < e && (*p == 'e' || *p == 'E')) {
    p++;
    if (p < e && (*p == '+' || *p == '-')) p++;
    if (p >= e || !is_digit(*p)) return 0;
    while (p < e && is_digit(*p)) p++;
  }
  j->p = p;
  return 1;
}

static int json_literal(Json *j, const char *word, size_t length) {
  if ((size_t)(j->end - j->p) < length || memcmp(j->p, word, length) != 0) return 0;
  j->p += length;
  return 1;
}

static int json_skip_value(Json *j);

static int json_skip_members(Json *j, unsigned char close, int keyed) {
  if (++j->depth > MAX_JSON_DEPTH) return 0;
  if (json_take(j, close)) {
    j->depth--;
    return 1;
  }
  do {
    Span key;
    if (keyed && (!json_string(j, &key) || !json_take(j, ':'))) return 0;
    if (!json_skip_value(j)) return 0;
  } while (json_take(j, ','));
  if (!json_take(j, close)) return 0;
  j->depth--;
  return 1;
}

static int json_skip_value(Json *j) {
  Span ignored;
  json_space(j);
  if (j->p >= j->end) return 0;
  switch (*j->p) {
    case '"': return json_string(j, &ignored);
    case '{': j->p++; return json_skip_members(j, '}', 1);
    case '[': j->p++; return json_skip_members(j, ']', 0);
    case 't': return json_literal(j, "true", 4);
    case 'f': return json_literal(j, "false", 5);
    case 'n': return json_literal(j, "null", 4);
    default: return json_number(j);
  }
}

static inline int span_is(const Span *span, const char *word) {
  size_t length = strlen(word);
  return (size_t)span->length == length && memcmp(span->text, word, length) == 0;
}

typedef struct {
  Span message;
  int64_t timestamp;
} Event;

typedef struct {
  Event *items;
  Py_ssize_t count, capacity;
} Events;

static int events_add(Events *events, Event event) {
  if (events->count == events->capacity) {
    Py_ssize_t capacity = events->capacity ? 2 * events->capacity : 512;
    Event *items = realloc(events->items, (size_t)capacity * sizeof *items);
    if (items == NULL) return 0;
    events->items = items;
    events->capacity = capacity;
  }
  events->items[events->count++] = event;
  return 1;
}

typedef struct {
  Span text;  /* the digits of the last timestamp read, and their value */
  int64_t value;
} LastTimestamp;

/* A non-negative integer of at most 18 digits, as JSON writes it. The events
   of a message mostly share their timestamp: the same digits as the last
   ones are not converted again. */
static int json_timestamp(Json *j, LastTimestamp *last, int64_t *out) {
  json_space(j);
  const unsigned char *p = j->p, *e = j->end;
  if (p >= e || !is_digit(*p) || (*p == '0' && p + 1 < e && is_digit(p[1]))) return 0;
  const unsigned char *digits = p;
  while (p < e && is_digit(*p)) p++;
  Py_ssize_t length = p - digits;
  if (length > 18 || (p < e && (*p == '.' || *p == 'e' || *p == 'E'))) return 0;
  if (length != last->text.length || memcmp(digits, last->text.text, (size_t)length) != 0) {
    if (!decimal_value((const char *)digits, length, &last->value)) return 0;
    last->text.text = (const char *)digits;
    last->text.length = length;
  }
  j->p = p;
  *out = last->value;
  return 1;
}

/* One log event: an object with exactly one "message", a string, and one
   "timestamp", an integer. */
static int json_event(Json *j, Events *events, LastTimestamp *last) {
  if (!json_take(j, '{') || ++j->depth > MAX_JSON_DEPTH) return 0;
  int messages = 0, timestamps = 0;
  Event event;
  if (!json_take(j, '}')) {
    do {
      Span key;
      if (!json_string(j, &key) || !json_take(j, ':')) return 0;
      if (span_is(&key, "message")) {
        if (messages++ || !json_string(j, &event.message)) return 0;
      } else if (span_is(&key, "timestamp")) {
        if (timestamps++ || !json_timestamp(j, last, &event.timestamp)) return 0;
      } else if (!json_skip_value(j)) {
        return 0;
      }
    } while (json_take(j, ','));
    if (!json_take(j, '}')) return 0;
  }
  j->depth--;
  return messages == 1 && timestamps == 1 && events_add(events, event);
}

/* The whole message; 1 when it is a DATA_MESSAGE read into `events`. */
static int json_data_message(Json *j, Events *events) {
  int types = 0, event_lists = 0;
  if (!json_take(j, '{')) return 0;
  j->depth = 1;
  if (json_take(j, '}')) return 0;
  do {
    Span key;
    if (!json_string(j, &key) || !json_take(j, ':')) return 0;
    if (span_is(&key, "messageType")) {
      Span type;
      if (types++ || !json_string(j, &type) || !span_is(&type, "DATA_MESSAGE")) return 0;
    } else if (span_is(&key, "logEvents")) {
      if (event_lists++ || !json_take(j, '[')) return 0;
      LastTimestamp last = {{NULL, -1}, 0};
      if (!json_take(j, ']')) {
        do {
          if (!json_event(j, events, &last)) return 0;
        } while (json_take(j, ','));
        if (!json_take(j, ']')) return 0;
      }
    } else if (!json_skip_value(j)) {
      return 0;
    }
  } while (json_take(j, ','));
  if (!json_take(j, '}')) return 0;
  json_space(j);
  return j->p == j->end && types == 1 && event_lists == 1;
}

static PyObject *data_message_events(PyObject *Py_UNUSED(module), PyObject *payload) {
  if (!PyBytes_Check(payload)) Py_RETURN_NONE;
  Json j = {(const unsigned char *)PyBytes_AS_STRING(payload),
            (const unsigned char *)PyBytes_AS_STRING(payload) + PyBytes_GET_SIZE(payload), 0};
  Events events = {NULL, 0, 0};
  int ok;
  Py_BEGIN_ALLOW_THREADS  /* bytes are immutable and the caller holds them */
  ok = json_data_message(&j, &events);
  Py_END_ALLOW_THREADS
  if (!ok) {
    free(events.items);
    Py_RETURN_NONE;
  }
  PyObject *lines = PyTuple_New(events.count);
  PyObject *timestamps = lines ? PyBytes_FromStringAndSize(NULL, events.count * (Py_ssize_t)sizeof(int64_t)) : NULL;
  for (Py_ssize_t i = 0; timestamps != NULL && i < events.count; i++) {
    PyObject *line = ascii_str(events.items[i].message.text, events.items[i].message.length);
    if (line == NULL) {
      Py_CLEAR(timestamps);
      break;
    }
    PyTuple_SET_ITEM(lines, i, line);
    ((int64_t *)PyBytes_AS_STRING(timestamps))[i] = events.items[i].timestamp;
  }
  free(events.items);
  if (timestamps == NULL) {
    Py_XDECREF(lines);
    return NULL;
  }
  return Py_BuildValue("(NN)", lines, timestamps);
}

/* ---- plain_ascii_lines: a block of a flow log file's text, split into lines ----

   plain_ascii_lines(region: bytes, max_line_bytes: int, header_word: bytes)
     -> list of str, or None

   The lines of `region` (whole lines, the last maybe without its line end),
   each without its '\n' and any '\r' before it, exactly as
   decode._plain_lines gives them, when every byte is ASCII, no line is longer
   than `max_line_bytes` (counted before the '\r's go, as there) and
   `header_word` occurs nowhere in the region. Anything else gives None: the
   Python path reads the block and decides. The scan runs without the GIL, so
   that another worker thread can run Python meanwhile; only the str objects
   are made with it. */

typedef struct {
  Py_ssize_t begin, length;
} LineSpan;

/* The region's lines into a new array (*lines, *count), or 0 when the
   region is not plain (above) or memory ran out (*no_memory set). */
static int split_plain(const char *text, Py_ssize_t size, Py_ssize_t max_line_bytes, const char *word,
                       Py_ssize_t word_length, LineSpan **lines, Py_ssize_t *count, int *no_memory) {
  *no_memory = 0;
  if (word_length > 0 && memmem(text, (size_t)size, word, (size_t)word_length) != NULL) return 0;
  unsigned char high = 0; /* branch-free, so that the compiler vectorises it */
  Py_ssize_t newlines = 0;
  for (Py_ssize_t i = 0; i < size; i++) {
    high |= (unsigned char)text[i];
    newlines += text[i] == '\n';
  }
  if (high & 0x80) return 0;
  /* At most one line more than the line ends: the last one, without its own. */
  LineSpan *spans = malloc((size_t)(newlines + 1) * sizeof(LineSpan));
  if (spans == NULL) {
    *no_memory = 1;
    return 0;
  }
  Py_ssize_t k = 0;
  if (size == 0) spans[k++] = (LineSpan){0, 0}; /* one empty line, as ''.split('\n') is */
  for (Py_ssize_t begin = 0; begin < size; k++) {
    const char *newline = memchr(text + begin, '\n', (size_t)(size - begin));
    Py_ssize_t stop = newline ? newline - text : size;
    Py_ssize_t length = stop - begin;
    if (length > max_line_bytes) {
      free(spans);
      return 0;
    }
    while (length > 0 && text[begin + length - 1] == '\r') length--;
    spans[k].begin = begin;
    spans[k].length = length;
    begin = stop + 1;
  }
  *lines = spans;
  *count = k;
  return 1;
}

static PyObject *plain_ascii_lines(PyObject *Py_UNUSED(module), PyObject *args) {
  PyObject *region, *word;
  Py_ssize_t max_line_bytes;
  if (!PyArg_ParseTuple(args, "SnS", &region, &max_line_bytes, &word)) return NULL;
  const char *text = PyBytes_AS_STRING(region);
  LineSpan *spans = NULL;
  Py_ssize_t count = 0;
  int ok, no_memory;
  Py_BEGIN_ALLOW_THREADS  /* bytes are immutable and the caller holds them */
  ok = split_plain(text, PyBytes_GET_SIZE(region), max_line_bytes, PyBytes_AS_STRING(word),
                   PyBytes_GET_SIZE(word), &spans, &count, &no_memory);
  Py_END_ALLOW_THREADS
  if (no_memory) return PyErr_NoMemory();
  if (!ok) Py_RETURN_NONE;
  PyObject *lines = PyList_New(count);
  for (Py_ssize_t i = 0; lines != NULL && i < count; i++) {
    PyObject *line = ascii_str(text + spans[i].begin, spans[i].length);
    if (line == NULL) Py_CLEAR(lines);
    else PyList_SET_ITEM(lines, i, line);
  }
  free(spans);
  return lines;
}

static PyMethodDef methods[] = {
    {"data_message_events", data_message_events, METH_O,
     "data_message_events(payload) -> (lines, event_times), or None: see transforms/_flowscan.c."},
    {"plain_ascii_lines", plain_ascii_lines, METH_VARARGS,
     "plain_ascii_lines(region, max_line_bytes, header_word) -> list of str, or None: see "
     "transforms/_flowscan.c."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_flowscan",
    .m_doc = "The decoding fast paths in C (transforms/_flowscan.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__flowscan(void) { return PyModule_Create(&module); }

/* The decoding and counting fast paths in C: CloudWatch Logs subscription
   messages to flow log lines (data_message_lines, below), flow log lines to
   peer pairs per window bucket (scan), address keys to text (dotted_quads).


   scan(lines, n_fields, src, dst, start, end, status, window_seconds,
        min_time, max_time, known_addresses)
     -> (pairs_by_bucket, other_flows, rest, counted)

   `lines` is a tuple or list of str; `src`..`status` are column positions
   (`end` and `status` -1 when the format lacks them); `known_addresses` is
   the address cache, a dict from address text to its key
   (flow_record.AddressKeys). A line is counted here only when it is exactly
   what LogFormat.parse and the Python path read the same way:
     - ASCII, `n_fields` fields separated by single spaces, no other white
       space that str.split() splits on, none at either end;
     - log-status exactly "OK" (when the format has it);
     - start and end plain decimal digits, min_time <= start <= end < max_time;
     - each address an IPv4 dotted quad written as inet_ntoa writes it (no
       leading zeros), which address_key always accepts, or a text the
       address cache already holds (IPv6 addresses, mostly).
   Every other line (an address not seen before, "-", NODATA, bad lines,
   anything unusual) is returned in `rest`, by index, for the Python parser to
   decide.

   pairs_by_bucket maps each window start (start - start % window_seconds) to
   bytes holding native uint64 pairs, both directions of every flow between
   two dotted quads: src << 32 | dst and dst << 32 | src (transforms.peers'
   narrow pairs). other_flows lists (window start, src key, dst key) for the
   flows with a cached address. `counted` is the number of flows counted in
   the two.

   The lines are scanned with the GIL released: str objects are immutable and
   a tuple of them (made of `lines` if it is a list) holds them. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const char *text;  /* NULL: not ASCII str, goes to rest */
  Py_ssize_t length;
} Line;

enum { REST, DOTTED_QUADS, CACHED_ADDRESS };

typedef struct {
  int kind;        /* REST: not counted here; DOTTED_QUADS: src and dst parsed;
                      CACHED_ADDRESS: an address to look up in the cache */
  int64_t bucket;  /* window start */
  uint32_t src, dst;
  int src_parsed, dst_parsed;
  const char *src_text, *dst_text;
  Py_ssize_t src_length, dst_length;
} Flow;

enum { SLOT_SRC, SLOT_DST, SLOT_START, SLOT_END, SLOT_STATUS, SLOTS };

typedef struct {
  Py_ssize_t n_fields;
  signed char *slot_of_column;  /* n_fields entries, -1 for unused columns */
  int has_end, has_status;
  int64_t window_seconds, min_time, max_time;
} Format;

static int parse_ipv4(const char *s, Py_ssize_t n, uint32_t *out) {
  uint32_t value = 0;
  Py_ssize_t i = 0;
  for (int octet_index = 0; octet_index < 4; octet_index++) {
    if (octet_index > 0) {
      if (i >= n || s[i] != '.') return 0;
      i++;
    }
    Py_ssize_t begin = i;
    unsigned octet = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
      if (i - begin == 3) return 0;
      octet = octet * 10 + (unsigned)(s[i] - '0');
      i++;
    }
    if (i == begin || octet > 255 || (s[begin] == '0' && i - begin > 1)) return 0;
    value = value << 8 | octet;
  }
  if (i != n) return 0;
  *out = value;
  return 1;
}

static int parse_digits(const char *s, Py_ssize_t n, int64_t *out) {
  if (n < 1 || n > 15) return 0;
  int64_t value = 0;
  for (Py_ssize_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return 0;
    value = value * 10 + (s[i] - '0');
  }
  *out = value;
  return 1;
}

/* str.split() splits on these ASCII characters besides the space. */
static inline int is_other_whitespace(unsigned char c) {
  return (c >= 9 && c <= 13) || (c >= 28 && c <= 31);
}

/* Fills `flow`; its kind stays REST unless the line is counted here. */
static void scan_line(const Line *line, const Format *format, Flow *flow) {
  const char *field_text[SLOTS] = {0};
  Py_ssize_t field_length[SLOTS] = {0};
  const char *s = line->text;
  Py_ssize_t n = line->length;
  flow->kind = REST;
  if (s == NULL || n == 0) return;
  Py_ssize_t field = 0, begin = 0;
  for (Py_ssize_t i = 0; i <= n; i++) {
    unsigned char c = i < n ? (unsigned char)s[i] : ' ';
    if (c == ' ') {
      if (i == begin || field >= format->n_fields) return;  /* empty field, or too many */
      int slot = format->slot_of_column[field];
      if (slot >= 0) {
        field_text[slot] = s + begin;
        field_length[slot] = i - begin;
      }
      field++;
      begin = i + 1;
    } else if (is_other_whitespace(c)) {
      return;
    }
  }
  if (field != format->n_fields) return;
  if (format->has_status &&
      !(field_length[SLOT_STATUS] == 2 && field_text[SLOT_STATUS][0] == 'O' &&
        field_text[SLOT_STATUS][1] == 'K'))
    return;
  int64_t start, end;
  if (!parse_digits(field_text[SLOT_START], field_length[SLOT_START], &start)) return;
  end = start;
  if (format->has_end && !parse_digits(field_text[SLOT_END], field_length[SLOT_END], &end))
    return;
  if (start < format->min_time || end >= format->max_time || end < start) return;
  flow->bucket = start - start % format->window_seconds;
  flow->src_text = field_text[SLOT_SRC];
  flow->src_length = field_length[SLOT_SRC];
  flow->dst_text = field_text[SLOT_DST];
  flow->dst_length = field_length[SLOT_DST];
  flow->src_parsed = parse_ipv4(flow->src_text, flow->src_length, &flow->src);
  flow->dst_parsed = parse_ipv4(flow->dst_text, flow->dst_length, &flow->dst);
  flow->kind = flow->src_parsed && flow->dst_parsed ? DOTTED_QUADS : CACHED_ADDRESS;
}

/* The key of one side of a CACHED_ADDRESS flow (a new reference), or NULL
   without an exception when the cache does not hold its text. */
static PyObject *address_key(PyObject *known, int parsed, uint32_t value, const char *text,
                             Py_ssize_t length) {
  if (parsed) return PyLong_FromUnsignedLong(value);
  PyObject *address = PyUnicode_DecodeASCII(text, length, NULL);
  if (address == NULL) return NULL;
  PyObject *key = PyDict_GetItemWithError(known, address);
  Py_DECREF(address);
  if (key == NULL || !PyLong_CheckExact(key)) return NULL;
  Py_INCREF(key);
  return key;
}

/* Resolves the CACHED_ADDRESS flows into (bucket, src key, dst key) tuples;
   those with an address the cache does not hold become REST. */
static PyObject *cached_address_flows(Flow *flows, Py_ssize_t n, PyObject *known) {
  PyObject *result = PyList_New(0);
  if (result == NULL) return NULL;
  for (Py_ssize_t i = 0; i < n; i++) {
    Flow *flow = &flows[i];
    if (flow->kind != CACHED_ADDRESS) continue;
    PyObject *src = address_key(known, flow->src_parsed, flow->src, flow->src_text, flow->src_length);
    PyObject *dst = src ? address_key(known, flow->dst_parsed, flow->dst, flow->dst_text, flow->dst_length) : NULL;
    if (dst == NULL) {
      Py_XDECREF(src);
      if (PyErr_Occurred()) goto error;
      flow->kind = REST;
      continue;
    }
    PyObject *entry = Py_BuildValue("(LNN)", (long long)flow->bucket, src, dst);
    if (entry == NULL || PyList_Append(result, entry) < 0) {
      Py_XDECREF(entry);
      goto error;
    }
    Py_DECREF(entry);
  }
  return result;
error:
  Py_DECREF(result);
  return NULL;
}

static int by_bucket(const void *a, const void *b) {
  int64_t x = ((const Flow *)a)->bucket, y = ((const Flow *)b)->bucket;
  return (x > y) - (x < y);
}

/* The DOTTED_QUADS flows' pairs, per bucket. Reorders `flows` (the caller is
   done with their order): sorted by bucket when they are not already, so
   that a batch spanning many windows costs n log n, not n per window. */
static PyObject *pairs_by_bucket(Flow *flows, Py_ssize_t n) {
  Py_ssize_t kept = 0;
  int sorted = 1;
  for (Py_ssize_t i = 0; i < n; i++) {
    if (flows[i].kind != DOTTED_QUADS) continue;
    if (kept > 0 && flows[i].bucket < flows[kept - 1].bucket) sorted = 0;
    flows[kept++] = flows[i];
  }
  if (!sorted) qsort(flows, (size_t)kept, sizeof *flows, by_bucket);
  PyObject *result = PyDict_New();
  for (Py_ssize_t first = 0, next; result != NULL && first < kept; first = next) {
    for (next = first + 1; next < kept && flows[next].bucket == flows[first].bucket; next++) {}
    PyObject *data = PyBytes_FromStringAndSize(NULL, (next - first) * 2 * (Py_ssize_t)sizeof(uint64_t));
    PyObject *key = data ? PyLong_FromLongLong(flows[first].bucket) : NULL;
    if (key == NULL || PyDict_SetItem(result, key, data) < 0) Py_CLEAR(result);
    Py_XDECREF(key);
    Py_XDECREF(data);
    if (result == NULL) break;
    uint64_t *pairs = (uint64_t *)PyBytes_AS_STRING(data);  /* the dict holds data */
    for (Py_ssize_t i = first; i < next; i++) {
      uint64_t src = flows[i].src, dst = flows[i].dst;
      *pairs++ = src << 32 | dst;
      *pairs++ = dst << 32 | src;
    }
  }
  return result;
}

static PyObject *scan(PyObject *module, PyObject *args) {
  PyObject *sequence, *known;
  Py_ssize_t n_fields, columns[SLOTS];
  long long window_seconds, min_time, max_time;
  if (!PyArg_ParseTuple(args, "OnnnnnnLLLO!:scan", &sequence, &n_fields, &columns[SLOT_SRC],
                        &columns[SLOT_DST], &columns[SLOT_START], &columns[SLOT_END],
                        &columns[SLOT_STATUS], &window_seconds, &min_time, &max_time,
                        &PyDict_Type, &known))
    return NULL;
  if (n_fields < 1 || window_seconds < 1 || min_time < 0) {
    PyErr_SetString(PyExc_ValueError, "scan: n_fields and window_seconds must be positive, min_time not negative");
    return NULL;
  }
  for (int slot = 0; slot < SLOTS; slot++) {
    int optional = slot == SLOT_END || slot == SLOT_STATUS;
    if (columns[slot] >= n_fields || columns[slot] < (optional ? -1 : 0)) {
      PyErr_SetString(PyExc_ValueError, "scan: a column is outside the format");
      return NULL;
    }
  }
  /* A tuple (the sequence itself if it is one): nothing can change it while
     the GIL is released. */
  PyObject *lines = PySequence_Tuple(sequence);
  if (lines == NULL) return NULL;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(lines);
  PyObject **items = PySequence_Fast_ITEMS(lines);
  Format format = {n_fields, NULL, columns[SLOT_END] >= 0, columns[SLOT_STATUS] >= 0,
                   window_seconds, min_time, max_time};
  format.slot_of_column = malloc((size_t)n_fields);
  Line *texts = malloc((size_t)(n ? n : 1) * sizeof *texts);
  Flow *flows = malloc((size_t)(n ? n : 1) * sizeof *flows);
  PyObject *result = NULL, *buckets = NULL, *others = NULL, *rest = NULL;
  if (!format.slot_of_column || !texts || !flows) {
    PyErr_NoMemory();
    goto done;
  }
  memset(format.slot_of_column, -1, (size_t)n_fields);
  for (int slot = 0; slot < SLOTS; slot++) {
    if (columns[slot] >= 0 && format.slot_of_column[columns[slot]] < 0)
      format.slot_of_column[columns[slot]] = (signed char)slot;
  }
  /* A format whose optional column is also a required one (the Python side
     passes start for a missing end) is told by has_end/has_status alone. */
  if (columns[SLOT_END] >= 0 && format.slot_of_column[columns[SLOT_END]] != SLOT_END) format.has_end = 0;
  if (columns[SLOT_STATUS] >= 0 && format.slot_of_column[columns[SLOT_STATUS]] != SLOT_STATUS)
    format.has_status = 0;
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject *item = items[i];
    if (PyUnicode_Check(item) && PyUnicode_IS_READY(item) && PyUnicode_IS_ASCII(item)) {
      texts[i].text = (const char *)PyUnicode_DATA(item);
      texts[i].length = PyUnicode_GET_LENGTH(item);
    } else {
      texts[i].text = NULL;
      texts[i].length = 0;
    }
  }
  Py_BEGIN_ALLOW_THREADS
  for (Py_ssize_t i = 0; i < n; i++) scan_line(&texts[i], &format, &flows[i]);
  Py_END_ALLOW_THREADS
  others = cached_address_flows(flows, n, known);
  if (others == NULL) goto done;
  rest = PyList_New(0);
  if (rest == NULL) goto done;
  Py_ssize_t counted = n;
  for (Py_ssize_t i = 0; i < n; i++) {
    if (flows[i].kind != REST) continue;
    counted--;
    PyObject *index = PyLong_FromSsize_t(i);
    if (index == NULL || PyList_Append(rest, index) < 0) {
      Py_XDECREF(index);
      goto done;
    }
    Py_DECREF(index);
  }
  buckets = pairs_by_bucket(flows, n);  /* last: it reorders the flows */
  if (buckets == NULL) goto done;
  result = Py_BuildValue("(OOOn)", buckets, others, rest, counted);
done:
  Py_XDECREF(buckets);
  Py_XDECREF(others);
  Py_XDECREF(rest);
  free(format.slot_of_column);
  free(texts);
  free(flows);
  Py_DECREF(lines);
  return result;
}

/* dotted_quads(keys) -> list: each IPv4 address key (an int below 2**32) as
   inet_ntoa writes it; None for any other key. */
static PyObject *dotted_quads(PyObject *module, PyObject *sequence) {
  PyObject *keys = PySequence_Fast(sequence, "dotted_quads: keys must be a sequence");
  if (keys == NULL) return NULL;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(keys);
  PyObject **items = PySequence_Fast_ITEMS(keys);
  PyObject *result = PyList_New(n);
  for (Py_ssize_t i = 0; result != NULL && i < n; i++) {
    unsigned long long key = PyLong_Check(items[i]) ? PyLong_AsUnsignedLongLong(items[i]) : (unsigned long long)-1;
    if (key == (unsigned long long)-1 && PyErr_Occurred()) {
      if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
        Py_CLEAR(result);
        break;
      }
      PyErr_Clear();  /* negative, or wider than 64 bits */
    }
    PyObject *text;
    if (key > 0xFFFFFFFFull) {
      text = Py_None;
      Py_INCREF(text);
    } else {
      char buffer[16], *end = buffer;
      for (int shift = 24; shift >= 0; shift -= 8) {
        unsigned octet = (unsigned)(key >> shift) & 0xFF;
        if (octet >= 100) *end++ = (char)('0' + octet / 100);
        if (octet >= 10) *end++ = (char)('0' + octet / 10 % 10);
        *end++ = (char)('0' + octet % 10);
        if (shift) *end++ = '.';
      }
      text = PyUnicode_New(end - buffer, 127);
      if (text == NULL) {
        Py_CLEAR(result);
        break;
      }
      memcpy(PyUnicode_DATA(text), buffer, (size_t)(end - buffer));
    }
    PyList_SET_ITEM(result, i, text);
  }
  Py_DECREF(keys);
  return result;
}

/* ---- data_message_lines: a CloudWatch Logs subscription message's lines ----

   data_message_lines(payload: bytes) -> tuple of str, or None

   The "message" of every log event of a DATA_MESSAGE, read straight from the
   JSON text, without building the events' dicts (json_loads, orjson, builds
   them all and sizes a parse buffer of about twelve times the message).
   Only a strict subset of JSON is read here: ASCII throughout, strings
   without backslash escapes or control characters, integers of at most 19
   digits, nesting at most 64 deep,
   the top object with exactly one "messageType", "DATA_MESSAGE", and one
   "logEvents", an array of objects each with exactly one "message", a
   string. Such a text is valid JSON whose parse gives these very messages.
   Anything else, valid JSON or not, gives None: the Python path
   (decode.decode_subscription_message) parses it and decides. */

enum { MAX_JSON_DEPTH = 64 };

typedef struct {
  const unsigned char *p, *end;
  int depth;
} Json;

typedef struct {
  const char *text;
  Py_ssize_t length;
} Span;

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

static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

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
  Span *items;
  Py_ssize_t count, capacity;
} Spans;

static int spans_add(Spans *spans, Span span) {
  if (spans->count == spans->capacity) {
    Py_ssize_t capacity = spans->capacity ? 2 * spans->capacity : 512;
    Span *items = realloc(spans->items, (size_t)capacity * sizeof *items);
    if (items == NULL) return 0;
    spans->items = items;
    spans->capacity = capacity;
  }
  spans->items[spans->count++] = span;
  return 1;
}

/* One log event: an object with exactly one "message", a string. */
static int json_event(Json *j, Spans *messages) {
  if (!json_take(j, '{') || ++j->depth > MAX_JSON_DEPTH) return 0;
  int found = 0;
  if (!json_take(j, '}')) {
    do {
      Span key;
      if (!json_string(j, &key) || !json_take(j, ':')) return 0;
      if (span_is(&key, "message")) {
        Span message;
        if (found++ || !json_string(j, &message) || !spans_add(messages, message)) return 0;
      } else if (!json_skip_value(j)) {
        return 0;
      }
    } while (json_take(j, ','));
    if (!json_take(j, '}')) return 0;
  }
  j->depth--;
  return found;
}

/* The whole message; 1 when it is a DATA_MESSAGE read into `messages`. */
static int json_data_message(Json *j, Spans *messages) {
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
      if (!json_take(j, ']')) {
        do {
          if (!json_event(j, messages)) return 0;
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

static PyObject *data_message_lines(PyObject *module, PyObject *payload) {
  if (!PyBytes_Check(payload)) Py_RETURN_NONE;
  Json j = {(const unsigned char *)PyBytes_AS_STRING(payload),
            (const unsigned char *)PyBytes_AS_STRING(payload) + PyBytes_GET_SIZE(payload), 0};
  Spans messages = {NULL, 0, 0};
  int ok;
  Py_BEGIN_ALLOW_THREADS  /* bytes are immutable and the caller holds them */
  ok = json_data_message(&j, &messages);
  Py_END_ALLOW_THREADS
  if (!ok) {
    free(messages.items);
    Py_RETURN_NONE;
  }
  PyObject *lines = PyTuple_New(messages.count);
  for (Py_ssize_t i = 0; lines != NULL && i < messages.count; i++) {
    PyObject *line = PyUnicode_New(messages.items[i].length, 127);
    if (line == NULL) {
      Py_CLEAR(lines);
      break;
    }
    memcpy(PyUnicode_DATA(line), messages.items[i].text, (size_t)messages.items[i].length);
    PyTuple_SET_ITEM(lines, i, line);
  }
  free(messages.items);
  return lines;
}

static PyMethodDef methods[] = {
    {"data_message_lines", data_message_lines, METH_O,
     "data_message_lines(payload) -> tuple of str, or None: see transforms/_flowscan.c."},
    {"dotted_quads", dotted_quads, METH_O,
     "dotted_quads(keys) -> list of str or None: IPv4 address keys as text."},
    {"scan", scan, METH_VARARGS,
     "scan(lines, n_fields, src, dst, start, end, status, window_seconds, min_time, max_time,"
     " known_addresses) -> (pairs_by_bucket, other_flows, rest, counted):"
     " see transforms/_flowscan.c."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_flowscan",
    "The counting fast path in C (transforms/_flowscan.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__flowscan(void) { return PyModule_Create(&module); }

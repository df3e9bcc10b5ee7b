/* The counting scan in C: the twin of transforms/counting/rules.py's `scan`,
   with the same name, arguments and result, and address keys to text.

   scan(lines, plan, known_addresses, event_times=None)
     -> (pairs_by_key, flows, rest, counted)

   `lines` is a tuple or list of str; `plan` a rules.ScanPlan (a tuple:
   n_fields, the columns of srcaddr, dstaddr, pkt-srcaddr, pkt-dstaddr, start,
   end and log-status, -1 for one not used, window_seconds, min_time, max_time,
   the tuple of group columns, the field names); `known_addresses` the address
   cache, a dict from address text to key, read here and never written;
   `event_times` None or each line's log event timestamp (Unix ms, bytes of
   native int64s, negative for none: elements.LogBatch). The result is what rules.scan returns; only which lines land in
   `rest` differs: a line is counted here only when it is plainly what
   rules.read_line counts:
     - ASCII, `n_fields` fields separated by single spaces, no other byte
       at or below the space (white space str.split() splits on, control
       characters), none at either end;
     - log-status exactly "OK" (when the format has it);
     - start and end plain decimal digits, each plausible in seconds or in
       milliseconds (rules.flow_time), end not before start; or, without a
       start column, an event timestamp plausible in milliseconds;
     - each address (the packet's where used and not "-", else the
       interface's) an IPv4 dotted quad written as inet_ntoa writes it, which
       address_key always accepts, or a text the cache already holds.
   Every other line (an address not seen before, "-", NODATA, a header, bad
   lines, anything unusual) is returned in `rest`, by index, for read_line.

   The lines are scanned with the GIL released: str objects are immutable and
   a tuple of them (made of `lines` if it is a list) holds them. Spans of
   ASCII text, their digits and the str made of them come from
   transforms/_ascii_text.h, shared with the decoding fast path. */

#include "../_ascii_text.h"
#include <stdlib.h>

enum { REST, DOTTED_QUADS, CACHED_ADDRESS };

typedef struct {
  int kind;        /* REST: not counted here; DOTTED_QUADS: src and dst parsed;
                      CACHED_ADDRESS: an address to look up in the cache */
  int src_parsed, dst_parsed;
  int64_t bucket;  /* window start */
  uint32_t src, dst;
  Span src_text, dst_text;
  const Span *group;  /* n_group spans */
  Py_ssize_t n_group;
} Flow;

typedef struct {
  Py_ssize_t n_fields, src, dst, pkt_src, pkt_dst, start, end, status;
  long long window_seconds, min_time, max_time;
  Py_ssize_t n_group;
  Py_ssize_t *group;  /* n_group columns */
} Plan;

#define NO_TIME INT64_MIN
#define MILLISECONDS 1000

static int parse_ipv4(Span s, uint32_t *out) {
  uint32_t value = 0;
  Py_ssize_t i = 0;
  for (int octet_index = 0; octet_index < 4; octet_index++) {
    if (octet_index > 0) {
      if (i >= s.length || s.text[i] != '.') return 0;
      i++;
    }
    Py_ssize_t begin = i;
    unsigned octet = 0;
    while (i < s.length && is_digit((unsigned char)s.text[i])) {
      if (i - begin == 3) return 0;
      octet = octet * 10 + (unsigned)(s.text[i] - '0');
      i++;
    }
    if (i == begin || octet > 255 || (s.text[begin] == '0' && i - begin > 1)) return 0;
    value = value << 8 | octet;
  }
  if (i != s.length) return 0;
  *out = value;
  return 1;
}

/* A plausible time in seconds, from seconds or milliseconds (rules.flow_time). */
static int flow_seconds(Span s, const Plan *plan, int64_t *out) {
  int64_t value;
  if (s.length < 1 || s.length > 15 || !decimal_value(s.text, s.length, &value)) return 0;
  if (value >= plan->min_time && value < plan->max_time) {
    *out = value;
    return 1;
  }
  if (value >= plan->min_time * MILLISECONDS && value < plan->max_time * MILLISECONDS) {
    *out = value / MILLISECONDS;
    return 1;
  }
  return 0;
}

static inline Span field(Span line, const Py_ssize_t *begins, Py_ssize_t column) {
  Span s = {line.text + begins[column], begins[column + 1] - 1 - begins[column]};
  return s;
}

static inline int is_dash(Span s) { return s.length == 1 && s.text[0] == '-'; }

/* Fills `flow` (and its group spans); its kind stays REST unless the line is
   counted here. `begins` has room for n_fields + 1 offsets. */
static void scan_line(Span line, int64_t event_time, const Plan *plan, Py_ssize_t *begins,
                      Span *group, Flow *flow) {
  flow->kind = REST;
  if (line.text == NULL || line.length == 0) return;
  Py_ssize_t n_fields = 0;
  begins[0] = 0;
  const unsigned char *text = (const unsigned char *)line.text;
  Py_ssize_t i = 0;
  for (;;) {
    /* The field's bytes: every byte above the space is part of one (the text
       is ASCII), so only the few at or below it need a look. */
    while (i < line.length && text[i] > ' ') i++;
    /* White space other than the space, or a control character: read_line decides. */
    if (i < line.length && text[i] != ' ') return;
    if (i == begins[n_fields] || n_fields == plan->n_fields) return;  /* empty field, or too many */
    begins[++n_fields] = i + 1;
    if (i == line.length) break;
    i++;
  }
  if (n_fields != plan->n_fields) return;
  if (plan->status >= 0) {
    Span status = field(line, begins, plan->status);
    if (!(status.length == 2 && status.text[0] == 'O' && status.text[1] == 'K')) return;
  }
  int64_t start, end;
  if (plan->start >= 0) {
    if (!flow_seconds(field(line, begins, plan->start), plan, &start)) return;
    end = start;
    if (plan->end >= 0 && !flow_seconds(field(line, begins, plan->end), plan, &end)) return;
    if (end < start) return;
  } else {
    if (event_time == NO_TIME || event_time < 0) return;
    start = event_time / MILLISECONDS;
    if (start < plan->min_time || start >= plan->max_time) return;
  }
  flow->src_text = field(line, begins, plan->src);
  if (plan->pkt_src >= 0 && !is_dash(field(line, begins, plan->pkt_src)))
    flow->src_text = field(line, begins, plan->pkt_src);
  flow->dst_text = field(line, begins, plan->dst);
  if (plan->pkt_dst >= 0 && !is_dash(field(line, begins, plan->pkt_dst)))
    flow->dst_text = field(line, begins, plan->pkt_dst);
  if (is_dash(flow->src_text) || is_dash(flow->dst_text)) return;
  for (Py_ssize_t g = 0; g < plan->n_group; g++) group[g] = field(line, begins, plan->group[g]);
  flow->group = group;
  flow->n_group = plan->n_group;
  flow->bucket = start - start % plan->window_seconds;
  flow->src_parsed = parse_ipv4(flow->src_text, &flow->src);
  flow->dst_parsed = parse_ipv4(flow->dst_text, &flow->dst);
  flow->kind = flow->src_parsed && flow->dst_parsed ? DOTTED_QUADS : CACHED_ADDRESS;
}

/* The group's values as a tuple of str (a new reference). */
static PyObject *group_tuple(const Flow *flow) {
  PyObject *values = PyTuple_New(flow->n_group);
  for (Py_ssize_t g = 0; values != NULL && g < flow->n_group; g++) {
    PyObject *value = ascii_str(flow->group[g].text, flow->group[g].length);
    if (value == NULL) {
      Py_CLEAR(values);
      break;
    }
    PyTuple_SET_ITEM(values, g, value);
  }
  return values;
}

static int same_group(const Flow *a, const Flow *b) {
  for (Py_ssize_t g = 0; g < a->n_group; g++) {
    if (a->group[g].length != b->group[g].length ||
        memcmp(a->group[g].text, b->group[g].text, (size_t)a->group[g].length) != 0)
      return 0;
  }
  return 1;
}

/* The key of one side of a CACHED_ADDRESS flow (a new reference), or NULL
   without an exception when the cache does not hold its text. */
static PyObject *address_key(PyObject *known, int parsed, uint32_t value, Span text) {
  if (parsed) return PyLong_FromUnsignedLong(value);
  PyObject *address = PyUnicode_DecodeASCII(text.text, text.length, NULL);
  if (address == NULL) return NULL;
  PyObject *key = PyDict_GetItemWithError(known, address);
  Py_DECREF(address);
  if (key == NULL || !PyLong_CheckExact(key)) return NULL;
  Py_INCREF(key);
  return key;
}

/* Resolves the CACHED_ADDRESS flows into (bucket, group, src key, dst key)
   tuples; those with an address the cache does not hold become REST. */
static PyObject *cached_address_flows(Flow *flows, Py_ssize_t n, PyObject *known) {
  PyObject *result = PyList_New(0);
  PyObject *last_group = NULL;
  const Flow *last_flow = NULL;
  if (result == NULL) return NULL;
  for (Py_ssize_t i = 0; i < n; i++) {
    Flow *flow = &flows[i];
    if (flow->kind != CACHED_ADDRESS) continue;
    PyObject *src = address_key(known, flow->src_parsed, flow->src, flow->src_text);
    PyObject *dst = src ? address_key(known, flow->dst_parsed, flow->dst, flow->dst_text) : NULL;
    if (dst == NULL) {
      Py_XDECREF(src);
      if (PyErr_Occurred()) goto error;
      flow->kind = REST;
      continue;
    }
    if (last_flow == NULL || !same_group(last_flow, flow)) {  /* neighbours share a group */
      Py_XDECREF(last_group);
      last_group = group_tuple(flow);
      last_flow = flow;
    }
    PyObject *entry = last_group ? Py_BuildValue("(LONN)", (long long)flow->bucket, last_group, src, dst) : NULL;
    if (entry == NULL) {
      if (last_group == NULL) {
        Py_DECREF(src);
        Py_DECREF(dst);
      }
      goto error;
    }
    if (PyList_Append(result, entry) < 0) {
      Py_DECREF(entry);
      goto error;
    }
    Py_DECREF(entry);
  }
  Py_XDECREF(last_group);
  return result;
error:
  Py_XDECREF(last_group);
  Py_DECREF(result);
  return NULL;
}

static int by_key(const void *a, const void *b) {
  const Flow *x = a, *y = b;
  if (x->bucket != y->bucket) return (x->bucket > y->bucket) - (x->bucket < y->bucket);
  for (Py_ssize_t g = 0; g < x->n_group; g++) {
    Py_ssize_t n = x->group[g].length < y->group[g].length ? x->group[g].length : y->group[g].length;
    int order = memcmp(x->group[g].text, y->group[g].text, (size_t)n);
    if (order) return order;
    if (x->group[g].length != y->group[g].length) return x->group[g].length < y->group[g].length ? -1 : 1;
  }
  return 0;
}

/* The DOTTED_QUADS flows' pairs, per (bucket, group). Reorders `flows` (the
   caller is done with their order): sorted by key when they are not already
   grouped, so that a batch spanning many windows or groups costs n log n. */
static PyObject *pairs_by_key(Flow *flows, Py_ssize_t n) {
  Py_ssize_t kept = 0;
  int sorted = 1;
  for (Py_ssize_t i = 0; i < n; i++) {
    if (flows[i].kind != DOTTED_QUADS) continue;
    if (kept > 0 && by_key(&flows[i], &flows[kept - 1]) < 0) sorted = 0;
    flows[kept++] = flows[i];
  }
  if (!sorted) qsort(flows, (size_t)kept, sizeof *flows, by_key);
  PyObject *result = PyDict_New();
  for (Py_ssize_t first = 0, next; result != NULL && first < kept; first = next) {
    for (next = first + 1; next < kept && by_key(&flows[next], &flows[first]) == 0; next++) {}
    PyObject *data = PyBytes_FromStringAndSize(NULL, (next - first) * 2 * (Py_ssize_t)sizeof(uint64_t));
    PyObject *group = data ? group_tuple(&flows[first]) : NULL;
    PyObject *key = group ? Py_BuildValue("(LN)", (long long)flows[first].bucket, group) : NULL;
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

static int read_plan(PyObject *object, Plan *plan) {
  PyObject *group, *fields;
  if (!PyTuple_Check(object)) {
    PyErr_SetString(PyExc_TypeError, "scan: plan must be a rules.ScanPlan");
    return 0;
  }
  if (!PyArg_ParseTuple(object, "nnnnnnnnLLLO!O:scan plan", &plan->n_fields, &plan->src, &plan->dst,
                        &plan->pkt_src, &plan->pkt_dst, &plan->start, &plan->end, &plan->status,
                        &plan->window_seconds, &plan->min_time, &plan->max_time, &PyTuple_Type,
                        &group, &fields))
    return 0;
  if (plan->n_fields < 1 || plan->window_seconds < 1 || plan->min_time < 0 ||
      plan->max_time < plan->min_time || plan->max_time > INT64_MAX / MILLISECONDS) {
    PyErr_SetString(PyExc_ValueError, "scan: n_fields and window_seconds must be positive, "
                    "min_time and max_time in order and below 2**63 / 1000");
    return 0;
  }
  Py_ssize_t required[] = {plan->src, plan->dst};
  Py_ssize_t optional[] = {plan->pkt_src, plan->pkt_dst, plan->start, plan->end, plan->status};
  for (size_t i = 0; i < sizeof required / sizeof *required; i++) {
    if (required[i] < 0 || required[i] >= plan->n_fields) goto outside;
  }
  for (size_t i = 0; i < sizeof optional / sizeof *optional; i++) {
    if (optional[i] < -1 || optional[i] >= plan->n_fields) goto outside;
  }
  plan->n_group = PyTuple_GET_SIZE(group);
  plan->group = PyMem_Malloc((size_t)(plan->n_group ? plan->n_group : 1) * sizeof *plan->group);
  if (plan->group == NULL) {
    PyErr_NoMemory();
    return 0;
  }
  for (Py_ssize_t g = 0; g < plan->n_group; g++) {
    plan->group[g] = PyLong_AsSsize_t(PyTuple_GET_ITEM(group, g));
    if (plan->group[g] == -1 && PyErr_Occurred()) {
      PyMem_Free(plan->group);
      return 0;
    }
    if (plan->group[g] < 0 || plan->group[g] >= plan->n_fields) {
      PyMem_Free(plan->group);
      goto outside;
    }
  }
  return 1;
outside:
  PyErr_SetString(PyExc_ValueError, "scan: a column is outside the format");
  return 0;
}

/* Each line's event time (Unix ms) as int64, NO_TIME where there is none:
   `event_times` is None or bytes of native int64s (elements.LogBatch),
   negative for an event without a timestamp. */
static int read_event_times(PyObject *event_times, Py_ssize_t n, int64_t *out) {
  if (event_times == Py_None) {
    for (Py_ssize_t i = 0; i < n; i++) out[i] = NO_TIME;
    return 1;
  }
  Py_buffer view;
  if (PyObject_GetBuffer(event_times, &view, PyBUF_SIMPLE) < 0) return 0;
  int ok = view.len == n * (Py_ssize_t)sizeof(int64_t);
  if (ok) {
    memcpy(out, view.buf, (size_t)view.len);
    for (Py_ssize_t i = 0; i < n; i++) {
      if (out[i] < 0) out[i] = NO_TIME;
    }
  } else {
    PyErr_SetString(PyExc_ValueError, "scan: event_times must hold one int64 per line");
  }
  PyBuffer_Release(&view);
  return ok;
}

static PyObject *scan(PyObject *Py_UNUSED(module), PyObject *args) {
  PyObject *sequence, *plan_object, *known, *event_times = Py_None;
  Plan plan;
  if (!PyArg_ParseTuple(args, "OOO!|O:scan", &sequence, &plan_object, &PyDict_Type, &known,
                        &event_times))
    return NULL;
  if (!read_plan(plan_object, &plan)) return NULL;
  /* A tuple (the sequence itself if it is one): nothing can change it while
     the GIL is released. */
  PyObject *lines = PySequence_Tuple(sequence);
  if (lines == NULL) {
    PyMem_Free(plan.group);
    return NULL;
  }
  Py_ssize_t n = PyTuple_GET_SIZE(lines);
  size_t slots = (size_t)(n ? n : 1);
  Span *texts = malloc(slots * sizeof *texts);
  Flow *flows = malloc(slots * sizeof *flows);
  int64_t *times = malloc(slots * sizeof *times);
  Span *groups = malloc(slots * (size_t)(plan.n_group ? plan.n_group : 1) * sizeof *groups);
  Py_ssize_t *begins = malloc((size_t)(plan.n_fields + 1) * sizeof *begins);
  PyObject *result = NULL, *pairs = NULL, *others = NULL, *rest = NULL;
  if (!texts || !flows || !times || !groups || !begins) {
    PyErr_NoMemory();
    goto done;
  }
  /* Event times window only the lines of a format without start. */
  if (!read_event_times(plan.start < 0 ? event_times : Py_None, n, times)) goto done;
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject *item = PyTuple_GET_ITEM(lines, i);
    if (PyUnicode_Check(item) && PyUnicode_IS_READY(item) && PyUnicode_IS_ASCII(item)) {
      texts[i].text = (const char *)PyUnicode_DATA(item);
      texts[i].length = PyUnicode_GET_LENGTH(item);
    } else {
      texts[i].text = NULL;
      texts[i].length = 0;
    }
  }
  Py_BEGIN_ALLOW_THREADS
  for (Py_ssize_t i = 0; i < n; i++)
    scan_line(texts[i], times[i], &plan, begins, &groups[i * plan.n_group], &flows[i]);
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
  pairs = pairs_by_key(flows, n);  /* last: it reorders the flows */
  if (pairs == NULL) goto done;
  result = Py_BuildValue("(OOOn)", pairs, others, rest, counted);
done:
  Py_XDECREF(pairs);
  Py_XDECREF(others);
  Py_XDECREF(rest);
  free(texts);
  free(flows);
  free(times);
  free(groups);
  free(begins);
  PyMem_Free(plan.group);
  Py_DECREF(lines);
  return result;
}

/* dotted_quads(keys) -> list: each IPv4 address key (an int below 2**32) as
   inet_ntoa writes it; None for any other key. */
static PyObject *dotted_quads(PyObject *Py_UNUSED(module), PyObject *sequence) {
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
      text = ascii_str(buffer, end - buffer);
      if (text == NULL) {
        Py_CLEAR(result);
        break;
      }
    }
    PyList_SET_ITEM(result, i, text);
  }
  Py_DECREF(keys);
  return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(lines, plan, known_addresses, event_times=None) -> (pairs_by_key, flows, rest, counted):"
     " see transforms/counting/rules.py and _scan.c."},
    {"dotted_quads", dotted_quads, METH_O,
     "dotted_quads(keys) -> list of str or None: IPv4 address keys as text."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_scan",
    .m_doc = "The counting scan in C (transforms/counting/_scan.c), twin of rules.scan.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }

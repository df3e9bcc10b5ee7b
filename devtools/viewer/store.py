"""The receiver's SQLite store: every POSTed part, the document of each
(window, group), and what the viewer asks of them.

It keeps the rules of `ledger` (the plain in-memory version): a repeated
Idempotency-Key is a no-op, a later whole pane replaces an earlier one, a pane
counts once all its parts are in. A POST is answered only once its part, and
the document it completes, are committed (WAL, synchronous=FULL): what was
acknowledged survives a crash or a restart.

The viewer's questions are answered from indexes, not by reading documents:
each count row carries its address's jump baseline (`jumps`), computed when its
window arrives (and again for the `history` windows after a window that
changes), so that the top talkers of a window, an address's series and the
jumps for any ratio and minimum are index range scans.
"""

import collections
import itertools
import queue
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
import orjson

from devtools.viewer import jumps as jump_rule
from devtools.viewer.contract import Part, group_pairs
from devtools.viewer.ledger import (
  APPLIED,
  DUPLICATE,
  STALE,
  WAITING,
  Document,
  check_pane,
  conflict,
  merged_counts,
)
from devtools.viewer.jumps import JumpRule

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS parts (
  key TEXT PRIMARY KEY,
  digest TEXT NOT NULL,
  window_start INTEGER NOT NULL,
  group_key TEXT NOT NULL,
  pane INTEGER NOT NULL,
  part_index INTEGER NOT NULL,
  part_count INTEGER NOT NULL,
  window_end INTEGER,
  pane_timing TEXT NOT NULL,
  path TEXT NOT NULL,
  received_at REAL NOT NULL,
  -- the decoded JSON while its pane waits for its other parts; NULL once the
  -- pane is applied or stale (the counts are then in `counts`)
  body BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS parts_by_slot ON parts (group_key, window_start, pane, part_index);
CREATE TABLE IF NOT EXISTS groups (id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS windows (
  id INTEGER PRIMARY KEY,
  group_id INTEGER NOT NULL REFERENCES groups (id),
  start INTEGER NOT NULL,
  end INTEGER,
  pane INTEGER NOT NULL,
  pane_timing TEXT NOT NULL,
  path TEXT NOT NULL,
  addresses INTEGER NOT NULL,
  max_peers INTEGER NOT NULL,
  applied_at REAL NOT NULL,
  UNIQUE (group_id, start)
);
CREATE TABLE IF NOT EXISTS addresses (id INTEGER PRIMARY KEY, address TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS counts (
  window_id INTEGER NOT NULL,
  address_id INTEGER NOT NULL,
  peers INTEGER NOT NULL,
  baseline REAL,  -- jumps.baseline of the address here; NULL in a group's first window
  PRIMARY KEY (window_id, address_id)
) WITHOUT ROWID;
-- top talkers of a window, and jumps (peers >= min AND peers >= ratio * baseline);
-- an address's series is one primary-key lookup a window
CREATE INDEX IF NOT EXISTS counts_by_peers ON counts (window_id, peers, baseline);
"""


class CountArrays(NamedTuple):
  """One window's counts as arrays, by address id (ascending)."""

  ids: np.ndarray
  peers: np.ndarray

  @classmethod
  def of(cls, rows: List[Tuple[int, int]]) -> 'CountArrays':
    table = np.array(rows, dtype=np.int64).reshape(-1, 2)
    table = table[np.argsort(table[:, 0], kind='stable')]
    return cls(table[:, 0], table[:, 1].astype(np.float64))


def baselines(window: CountArrays, previous: List[CountArrays]) -> Optional[np.ndarray]:
  """`jumps.baseline` of each address of `window` (in its order) over the
  `previous` windows, or None when there are none: the same median as
  jumps.median, over arrays instead of a Python loop per address."""
  if not previous:
    return None
  matrix = np.zeros((len(previous), len(window.ids)))
  for row, earlier in zip(matrix, previous):
    if not len(earlier.ids):
      continue
    at = np.minimum(np.searchsorted(earlier.ids, window.ids), len(earlier.ids) - 1)
    present = earlier.ids[at] == window.ids
    row[present] = earlier.peers[at[present]]
  return np.median(matrix, axis=0)


class Store:
  """The SQLite file at `path` (created if missing, reopened as it was).

  `history`: how many previous windows a jump baseline looks at (None: the
  store's own, jumps.DEFAULT_HISTORY for a new one); reopening a store with
  another history recomputes every baseline."""

  def __init__(self, path: str, history: Optional[int] = None, readers: int = 4):
    if history is not None and history < 1:
      raise ValueError('history must be at least 1 window')
    self.path = path
    self.history = history or jump_rule.DEFAULT_HISTORY
    # Counts the documents applied by this process: answers computed from the
    # store stay good while it is unchanged (one receiver writes a store).
    self.version = 0
    self._version_lock = threading.Lock()
    self._write_lock = threading.Lock()
    self._recent: 'collections.OrderedDict[int, CountArrays]' = collections.OrderedDict()
    self._writer = self._connect()
    self._writer.executescript(SCHEMA)
    self._writer.execute('CREATE TEMP TABLE incoming (address TEXT NOT NULL, peers INTEGER NOT NULL)')
    self._readers: 'queue.Queue[sqlite3.Connection]' = queue.Queue()
    for _ in range(readers):
      self._readers.put(self._connect())
    self._check_history(history)

  def _connect(self) -> sqlite3.Connection:
    connection = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
    connection.execute('PRAGMA journal_mode=WAL')
    connection.execute('PRAGMA synchronous=FULL')
    connection.execute('PRAGMA foreign_keys=ON')
    connection.execute('PRAGMA cache_size=-65536')  # 64 MiB a connection
    return connection

  def close(self):
    with self._write_lock:
      self._writer.close()
    while not self._readers.empty():
      self._readers.get_nowait().close()

  @contextmanager
  def _transaction(self) -> Iterator[sqlite3.Connection]:
    with self._write_lock:
      self._writer.execute('BEGIN IMMEDIATE')
      try:
        yield self._writer
      except BaseException:
        self._writer.execute('ROLLBACK')
        self._recent.clear()  # it may hold counts that were rolled back
        raise
      self._writer.execute('COMMIT')

  @contextmanager
  def _reader(self) -> Iterator[sqlite3.Connection]:
    connection = self._readers.get()
    try:
      yield connection
    finally:
      self._readers.put(connection)

  # --- writing -------------------------------------------------------------

  def add(self, part: Part) -> str:
    """Stores one POSTed part; returns ledger.APPLIED, WAITING, DUPLICATE or
    STALE, or raises PostError (422) as ledger.MemoryLedger does."""
    with self._transaction() as db:
      outcome = self._add(db, part)
    if outcome == APPLIED:
      with self._version_lock:
        self.version += 1
    return outcome

  def _add(self, db: sqlite3.Connection, part: Part) -> str:
    row = db.execute('SELECT digest FROM parts WHERE key = ?', (part.key,)).fetchone()
    if row is not None:
      if row[0] != part.digest:
        raise conflict(f'Idempotency-Key {part.key!r} was already used for another body')
      return DUPLICATE
    pane_rows = db.execute(
      'SELECT part_index, part_count, body FROM parts WHERE group_key = ? AND window_start = ? AND pane = ?',
      (part.group, part.window_start, part.pane_index),
    ).fetchall()
    check_pane(part, [(index, count) for index, count, _ in pane_rows])
    applied = db.execute(
      'SELECT w.pane FROM windows w JOIN groups g ON g.id = w.group_id WHERE g.key = ? AND w.start = ?',
      (part.group, part.window_start),
    ).fetchone()
    waiting = [body for _, _, body in pane_rows if body is not None]
    if applied is not None and part.pane_index <= applied[0]:
      self._insert_part(db, part, None)
      return STALE
    if len(waiting) + 1 < part.part_count:
      self._insert_part(db, part, _body_of(part))
      return WAITING
    others = [_part_of(part, index, body) for index, _, body in pane_rows]
    counts = merged_counts(sorted([*others, part], key=lambda p: p.part_index))
    self._insert_part(db, part, None)
    db.execute(
      'UPDATE parts SET body = NULL WHERE group_key = ? AND window_start = ? AND pane <= ? '
      'AND body IS NOT NULL',
      (part.group, part.window_start, part.pane_index),
    )
    self._apply(db, part, counts)
    return APPLIED

  @staticmethod
  def _insert_part(db: sqlite3.Connection, part: Part, body: Optional[bytes]):
    db.execute(
      'INSERT INTO parts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
      (
        part.key,
        part.digest,
        part.window_start,
        part.group,
        part.pane_index,
        part.part_index,
        part.part_count,
        part.window_end,
        part.pane_timing,
        part.path,
        time.time(),
        body,
      ),
    )

  def _apply(self, db: sqlite3.Connection, part: Part, counts: Dict[str, int]):
    """Makes `counts` the document of the part's (window, group)."""
    db.execute('INSERT OR IGNORE INTO groups (key) VALUES (?)', (part.group,))
    group_id = db.execute('SELECT id FROM groups WHERE key = ?', (part.group,)).fetchone()[0]
    max_peers = max(counts.values(), default=0)
    row = db.execute(
      'SELECT id FROM windows WHERE group_id = ? AND start = ?', (group_id, part.window_start)
    ).fetchone()
    values = (
      part.window_end,
      part.pane_index,
      part.pane_timing,
      part.path,
      len(counts),
      max_peers,
      time.time(),
    )
    if row is None:
      window_id = db.execute(
        'INSERT INTO windows (group_id, start, end, pane, pane_timing, path, addresses, max_peers, '
        'applied_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
        (group_id, part.window_start, *values),
      ).lastrowid
    else:
      window_id = row[0]
      db.execute(
        'UPDATE windows SET end = ?, pane = ?, pane_timing = ?, path = ?, addresses = ?, '
        'max_peers = ?, applied_at = ? WHERE id = ?',
        (*values, window_id),
      )
      db.execute('DELETE FROM counts WHERE window_id = ?', (window_id,))
    db.execute('DELETE FROM incoming')
    db.executemany('INSERT INTO incoming VALUES (?, ?)', counts.items())
    db.execute('INSERT OR IGNORE INTO addresses (address) SELECT address FROM incoming')
    rows = db.execute('SELECT a.id, i.peers FROM incoming i JOIN addresses a ON a.address = i.address')
    window = CountArrays.of(rows.fetchall())
    db.execute('DELETE FROM incoming')
    self._remember(window_id, window)
    self._write_counts(db, window_id, group_id, part.window_start, window, insert=True)
    # The windows after this one look back at it.
    later = db.execute(
      'SELECT id, start FROM windows WHERE group_id = ? AND start > ? ORDER BY start LIMIT ?',
      (group_id, part.window_start, self.history),
    )
    for later_id, later_start in later.fetchall():
      self._write_counts(db, later_id, group_id, later_start, self._counts_of(db, later_id), insert=False)

  def _write_counts(self, db, window_id: int, group_id: int, start: int, window: 'CountArrays', insert: bool):
    """Writes the window's counts (or only their baselines) with the baselines
    its previous windows give."""
    previous = db.execute(
      'SELECT id FROM windows WHERE group_id = ? AND start < ? ORDER BY start DESC LIMIT ?',
      (group_id, start, self.history),
    ).fetchall()
    found = baselines(window, [self._counts_of(db, wid) for (wid,) in previous])
    rows = zip(
      itertools.repeat(window_id),
      window.ids.tolist(),
      window.peers.astype(np.int64).tolist(),
      found.tolist() if found is not None else itertools.repeat(None),
    )
    if insert:
      db.executemany('INSERT INTO counts VALUES (?, ?, ?, ?)', rows)
    else:
      db.executemany('UPDATE counts SET baseline = ?4 WHERE window_id = ?1 AND address_id = ?2', rows)

  def _counts_of(self, db, window_id: int) -> 'CountArrays':
    window = self._recent.get(window_id)
    if window is None:
      window = CountArrays.of(
        db.execute(
          'SELECT address_id, peers FROM counts WHERE window_id = ? ORDER BY address_id', (window_id,)
        ).fetchall()
      )
      self._remember(window_id, window)
    else:
      self._recent.move_to_end(window_id)
    return window

  def _remember(self, window_id: int, window: 'CountArrays'):
    """Keeps the last windows written or read, which the next window's
    baselines look back at, so that they are not read back from disk."""
    self._recent[window_id] = window
    self._recent.move_to_end(window_id)
    while len(self._recent) > 4 * self.history + 8:
      self._recent.popitem(last=False)

  def _check_history(self, asked: Optional[int]):
    with self._transaction() as db:
      row = db.execute("SELECT value FROM meta WHERE name = 'history'").fetchone()
      if row is not None and asked is None:
        self.history = int(row[0])
      elif row is not None and int(row[0]) != self.history:
        for window_id, group_id, start in db.execute('SELECT id, group_id, start FROM windows').fetchall():
          self._write_counts(db, window_id, group_id, start, self._counts_of(db, window_id), insert=False)
      db.execute("INSERT OR REPLACE INTO meta VALUES ('history', ?)", (str(self.history),))

  # --- reading -------------------------------------------------------------

  def documents(self) -> Dict[Document, Tuple[int, str, Dict[str, int]]]:
    """(window start, group) -> (pane, path, counts) of each whole document."""
    with self._reader() as db:
      out: Dict[Document, Tuple[int, str, Dict[str, int]]] = {}
      for window_id, start, group, pane, path in db.execute(
        'SELECT w.id, w.start, g.key, w.pane, w.path FROM windows w JOIN groups g ON g.id = w.group_id'
      ).fetchall():
        counts = dict(
          db.execute(
            'SELECT a.address, c.peers FROM counts c JOIN addresses a '
            'ON a.id = c.address_id WHERE c.window_id = ?',
            (window_id,),
          )
        )
        out[(start, group)] = (pane, path, counts)
      return out

  def groups(self) -> List[dict]:
    with self._reader() as db:
      rows = db.execute(
        'SELECT g.key, count(*), min(w.start), max(w.start) FROM groups g '
        'JOIN windows w ON w.group_id = g.id GROUP BY g.id ORDER BY g.key'
      ).fetchall()
    return [
      {'group': key, 'pairs': group_pairs(key), 'windows': n, 'first': first, 'last': last}
      for key, n, first, last in rows
    ]

  def windows(self, group: str, rule: JumpRule) -> List[dict]:
    """The group's windows in time order, each with how many addresses jumped."""
    with self._reader() as db:
      rows = db.execute(
        'SELECT w.start, w.end, w.pane, w.pane_timing, w.addresses, w.max_peers, '
        '  (SELECT count(*) FROM counts c WHERE c.window_id = w.id AND c.peers >= :min '
        '   AND c.peers >= :ratio * c.baseline) '
        'FROM windows w JOIN groups g ON g.id = w.group_id WHERE g.key = :group ORDER BY w.start',
        {'group': group, 'min': rule.min_count, 'ratio': rule.ratio},
      ).fetchall()
    return [
      {
        'start': start,
        'end': end,
        'pane': pane,
        'pane_timing': timing,
        'addresses': n,
        'max_peers': max_peers,
        'jumps': jumps,
      }
      for start, end, pane, timing, n, max_peers, jumps in rows
    ]

  def top(self, group: str, start: int, limit: int, rule: JumpRule) -> Optional[List[dict]]:
    """The window's `limit` addresses with the most distinct peers (ties by
    address), or None when the group has no such window."""
    with self._reader() as db:
      window = db.execute(
        'SELECT w.id FROM windows w JOIN groups g ON g.id = w.group_id WHERE g.key = ? AND w.start = ?',
        (group, start),
      ).fetchone()
      if window is None:
        return None
      rows = db.execute(
        'SELECT a.address, c.peers, c.baseline FROM counts c JOIN addresses a ON a.id = c.address_id '
        'WHERE c.window_id = ? ORDER BY c.peers DESC, a.address LIMIT ?',
        (window[0], limit),
      ).fetchall()
    return [
      {
        'address': address,
        'peers': peers,
        'baseline': baseline,
        'jump': jump_rule.is_jump(peers, baseline, rule),
      }
      for address, peers, baseline in rows
    ]

  def series(self, group: str, address: str, rule: JumpRule) -> List[dict]:
    """The address's distinct peers in each window of the group (0 where absent)."""
    with self._reader() as db:
      row = db.execute('SELECT id FROM addresses WHERE address = ?', (address,)).fetchone()
      address_id = row[0] if row else -1
      rows = db.execute(
        'SELECT w.start, c.peers, c.baseline FROM windows w JOIN groups g ON g.id = w.group_id '
        'LEFT JOIN counts c ON c.window_id = w.id AND c.address_id = ? '
        'WHERE g.key = ? ORDER BY w.start',
        (address_id, group),
      ).fetchall()
    return [
      {
        'start': start,
        'peers': peers or 0,
        'baseline': baseline,
        'present': peers is not None,
        'jump': peers is not None and jump_rule.is_jump(peers, baseline, rule),
      }
      for start, peers, baseline in rows
    ]

  def jumps(
    self,
    rule: JumpRule,
    since: int = 0,
    group: Optional[str] = None,
    limit: int = 1000,
    newest_first: bool = False,
  ) -> Tuple[List[dict], bool]:
    """The jumps in windows starting at or after `since` (of one group, or of
    all), oldest window first (or newest), at most `limit`; and whether more
    matched."""
    where = 'w.start >= :since' + ('' if group is None else ' AND g.key = :group')
    with self._reader() as db:
      rows = db.execute(
        # CROSS JOIN keeps this order: windows first, then each window's
        # range of counts_by_peers from the minimum up (the planner would
        # otherwise scan every count).
        'SELECT g.key, w.start, w.end, a.address, c.peers, c.baseline FROM windows w '
        'JOIN groups g ON g.id = w.group_id '
        'CROSS JOIN counts c INDEXED BY counts_by_peers ON c.window_id = w.id '
        '  AND c.peers >= :min AND c.peers >= :ratio * c.baseline '
        f'JOIN addresses a ON a.id = c.address_id WHERE {where} '
        f'ORDER BY w.start {"DESC" if newest_first else ""}, g.key, c.peers DESC, a.address '
        'LIMIT :limit',
        {'since': since, 'group': group, 'min': rule.min_count, 'ratio': rule.ratio, 'limit': limit + 1},
      ).fetchall()
    found = [
      {
        'group': key,
        'window_start': start,
        'window_end': end,
        'address': address,
        'peers': peers,
        'baseline': baseline,
      }
      for key, start, end, address, peers, baseline in rows[:limit]
    ]
    return found, len(rows) > limit


def _body_of(part: Part) -> bytes:
  return orjson.dumps(part.counts)


def _part_of(like: Part, part_index: int, body: bytes) -> Part:
  """A waiting part read back from the store (its counts are what matter)."""
  return like._replace(part_index=part_index, counts=orjson.loads(body))

"""Where a Kinesis read stands: the positions of the shards of one lineage
(the restriction of the splittable DoFn) and the tracker that moves them.

One restriction per shard *lineage*: the shards it still has to read, each with
its position (`StartPosition`: TRIM_HORIZON, LATEST, AT_TIMESTAMP, or
AFTER_SEQUENCE_NUMBER the last record claimed). Claiming a record moves its
shard's position, so a runner checkpoint (a split at fraction 0) hands back a
residual that resumes exactly after the last record emitted.

Resharding. Beam has no loops, so a shard's children cannot go back through the
shard lister. Instead, when GetRecords returns no NextShardIterator the shard is
drained, and the same restriction carries on with the children whose
ParentShardId is that shard (both children of a split; the child of a merge
belongs to its ParentShardId's lineage, and its AdjacentParentShardId's lineage
simply ends). Children are thus read strictly after their parent is drained,
exactly once, with no coordination between workers, on any runner. Two limits:
after a split both children are read in one restriction (round-robin) until the
runner splits it (`try_split` hands half the shards to a residual) or the job
restarts; and a merge's child waits for its adjacent parent only when that
parent is in the same restriction (as when a split is merged back), otherwise it
may start before the adjacent parent, read by another restriction, is drained.
Neither affects the counts (a window is a set union) nor lateness: every
restriction holds back the output watermark until its own shards are read, so
the watermark never passes the adjacent parent's unread records.

The element and restriction types here are what a runner's checkpoint holds
(Beam's default coder pickles them by class and field order): their fields and
their order are part of the checkpoint format and must not change.
`transforms/kinesis_source.py` keeps their old import path alive for
checkpoints taken before this package existed.
"""

import datetime
import math
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker
from apache_beam.transforms.core import RestrictionProvider

# ShardIteratorType values of GetShardIterator.
TRIM_HORIZON = 'TRIM_HORIZON'
LATEST = 'LATEST'
AT_TIMESTAMP = 'AT_TIMESTAMP'
AFTER_SEQUENCE_NUMBER = 'AFTER_SEQUENCE_NUMBER'
INITIAL_POSITIONS = (TRIM_HORIZON, LATEST, AT_TIMESTAMP)


class StartPosition(NamedTuple):
  """Where reading a shard starts: a ShardIteratorType and its argument."""

  iterator_type: str
  sequence_number: Optional[int] = None  # AFTER_SEQUENCE_NUMBER: the last record read
  timestamp: Optional[float] = None  # AT_TIMESTAMP: Unix seconds

  def shard_iterator_args(self) -> dict:
    """The GetShardIterator arguments for this position."""
    args = {'ShardIteratorType': self.iterator_type}
    if self.iterator_type == AFTER_SEQUENCE_NUMBER:
      args['StartingSequenceNumber'] = str(self.sequence_number)
    elif self.iterator_type == AT_TIMESTAMP:
      args['Timestamp'] = datetime.datetime.fromtimestamp(self.timestamp, datetime.timezone.utc)
    return args


class ShardCursor(NamedTuple):
  shard_id: str
  position: StartPosition


class KinesisShard(NamedTuple):
  """The element the reader gets: the root of one shard lineage."""

  stream_name: str
  shard_id: str
  start: StartPosition
  child_start: StartPosition  # where the shard's children start
  stop_at_latest: bool


class ShardRestriction(NamedTuple):
  """The shards a lineage still has to read (usually one; the children of a
  split until the runner splits them apart), each with its position, and the
  children of a merge waiting for their other parent, also in this
  restriction, to be drained: (child, parents still to drain)."""

  cursors: Tuple[ShardCursor, ...]
  child_start: StartPosition
  stop_at_latest: bool
  waiting: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()


# What ShardRestrictionTracker.try_claim accepts.
class RecordClaim(NamedTuple):
  """Claims one record; its shard's position moves after it."""

  shard_id: str
  sequence_number: int


class ChildShard(NamedTuple):
  shard_id: str
  parents: Tuple[str, ...]  # ParentShardId, and AdjacentParentShardId for a merge


class ShardClosed(NamedTuple):
  """The shard is drained; `children` (those whose ParentShardId it is) follow."""

  shard_id: str
  children: Tuple[ChildShard, ...]


class ShardCaughtUp(NamedTuple):
  """In a bounded read, the shard has nothing more to read: it ends here."""

  shard_id: str


def sequence_number(text: str) -> int:
  """A Kinesis sequence number (a decimal string of up to 128 bits) as an int:
  compared as text, '9' > '4959...'."""
  return int(text)


class ShardRestrictionTracker(RestrictionTracker):
  """Tracks the shards of a ShardRestriction and their positions."""

  def __init__(self, restriction: ShardRestriction):
    self._restriction = restriction
    self._cursors: Dict[str, ShardCursor] = {c.shard_id: c for c in restriction.cursors}
    self._waiting: Dict[str, Tuple[str, ...]] = dict(restriction.waiting)
    self._checkpointed = False
    self._claimed_records = 0

  def current_restriction(self) -> ShardRestriction:
    return self._restriction._replace(
      cursors=tuple(self._cursors.values()), waiting=tuple(self._waiting.items())
    )

  def try_claim(self, position) -> bool:
    if self._checkpointed or position.shard_id not in self._cursors:
      return False
    cursor = self._cursors[position.shard_id]
    if isinstance(position, RecordClaim):
      last = cursor.position.sequence_number
      if cursor.position.iterator_type == AFTER_SEQUENCE_NUMBER and position.sequence_number <= last:
        raise ValueError(
          f'{position.shard_id}: sequence number {position.sequence_number} '
          f'is not after {last}, the last one claimed'
        )
      self._cursors[position.shard_id] = cursor._replace(
        position=StartPosition(AFTER_SEQUENCE_NUMBER, position.sequence_number)
      )
      self._claimed_records += 1
    elif isinstance(position, ShardClosed):
      self._drained(position.shard_id, position.children)
    elif isinstance(position, ShardCaughtUp):
      if not self._restriction.stop_at_latest:
        raise ValueError('an unbounded read never ends at the latest record')
      self._drained(position.shard_id, ())
    else:
      raise TypeError(f'cannot claim {position!r}')
    return True

  def _drained(self, drained_id: str, children: Sequence[ChildShard]) -> None:
    """Replaces a shard read to its end by its children, in its place in the
    order. A merge's child whose other parent is still to be read here waits
    for it."""
    undrained = (set(self._cursors) | set(self._waiting)) - {drained_id}
    ready = []
    for child in children:
      pending = tuple(p for p in child.parents if p in undrained)
      if pending:
        self._waiting[child.shard_id] = pending
      else:
        ready.append(child.shard_id)
    for child_id, pending in list(self._waiting.items()):
      if drained_id in pending:
        pending = tuple(p for p in pending if p != drained_id)
        if pending:
          self._waiting[child_id] = pending
        else:
          del self._waiting[child_id]
          ready.append(child_id)
    replaced = {}
    for shard_id, cursor in self._cursors.items():
      if shard_id == drained_id:
        for child_id in ready:
          replaced[child_id] = ShardCursor(child_id, self._restriction.child_start)
      else:
        replaced[shard_id] = cursor
    self._cursors = replaced

  def try_split(self, fraction_of_remainder):
    """Fraction 0 (a checkpoint): the primary ends now, the residual holds every
    shard at its position. Otherwise the primary keeps that fraction of the
    shards (at least one) and the residual takes the rest; one shard is never
    split (it is one sequence, read in order), nor a restriction with a merge's
    child waiting for its parents."""
    if self._checkpointed or not self._cursors:
      return None
    cursors = list(self._cursors.values())
    if fraction_of_remainder <= 0:
      kept = 0
    else:
      kept = max(1, math.ceil(len(cursors) * fraction_of_remainder))
      if kept >= len(cursors) or self._waiting:
        return None
    residual = self.current_restriction()._replace(cursors=tuple(cursors[kept:]))
    self._cursors = {c.shard_id: c for c in cursors[:kept]}
    if kept == 0:
      self._checkpointed = True
      self._waiting = {}
    return self.current_restriction(), residual

  def check_done(self):
    if (self._cursors or self._waiting) and not self._checkpointed:
      raise ValueError(
        'shards not read to their end: ' + ', '.join(list(self._cursors) + list(self._waiting))
      )

  def current_progress(self) -> RestrictionProgress:
    remaining = float(len(self._cursors))
    if not self._claimed_records and not remaining:
      # Checkpointed before its first record: all done. (Beam divides the
      # completed work by the total: 0 of 0 fails its progress report.)
      return RestrictionProgress(fraction=1.0)
    return RestrictionProgress(completed=float(self._claimed_records), remaining=remaining)

  def is_bounded(self) -> bool:
    return self._restriction.stop_at_latest


class ShardRestrictionProvider(RestrictionProvider):
  def initial_restriction(self, shard: KinesisShard) -> ShardRestriction:
    return ShardRestriction(
      (ShardCursor(shard.shard_id, shard.start),), shard.child_start, shard.stop_at_latest
    )

  def create_tracker(self, restriction: ShardRestriction) -> ShardRestrictionTracker:
    return ShardRestrictionTracker(restriction)

  def restriction_size(self, shard, restriction: ShardRestriction) -> float:
    return float(len(restriction.cursors))

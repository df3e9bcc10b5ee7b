"""A stream's shards as ListShards gives them, and the lineages read from them.

`ListShardsDoFn` emits the lineages' roots: for TRIM_HORIZON and AT_TIMESTAMP,
every shard whose parent is not in the listing (older shards have aged out of
retention); for LATEST, the open shards. Every other shard is reached from its
parent's lineage once the parent is drained (see `restriction`). Children of a
shard read from LATEST start at TRIM_HORIZON (all their records are new); with
AT_TIMESTAMP they start at that timestamp too.
"""

from typing import Iterable, List, Sequence, Tuple

from transforms.kinesis.restriction import LATEST, ChildShard


def list_all_shards(client, stream_name: str) -> List[dict]:
  """Every shard ListShards returns for the stream, following NextToken."""
  shards: List[dict] = []
  response = client.list_shards(StreamName=stream_name)
  shards.extend(response['Shards'])
  while response.get('NextToken'):
    # With NextToken, ListShards refuses StreamName.
    response = client.list_shards(NextToken=response['NextToken'])
    shards.extend(response['Shards'])
  return shards


def is_open(shard: dict) -> bool:
  return 'EndingSequenceNumber' not in shard.get('SequenceNumberRange', {})


def owned_children(shards: Iterable[dict], shard_id: str) -> Tuple[ChildShard, ...]:
  """The shards whose ParentShardId is `shard_id`: both children of a split, or
  the child of a merge whose first parent it is. (A merge's child is read by
  its ParentShardId's lineage only, so by exactly one.)"""
  return tuple(
    ChildShard(s['ShardId'], tuple(p for p in (s.get('ParentShardId'), s.get('AdjacentParentShardId')) if p))
    for s in shards
    if s.get('ParentShardId') == shard_id
  )


def lineage_roots(shards: Sequence[dict], initial_position: str) -> List[str]:
  """The shards the read starts from. LATEST: the open shards. Otherwise the
  shards whose ParentShardId is not listed (it aged out of retention, or there
  never was one); every other shard is reached from its parent's lineage."""
  if initial_position == LATEST:
    return [s['ShardId'] for s in shards if is_open(s)]
  listed = {s['ShardId'] for s in shards}
  return [s['ShardId'] for s in shards if s.get('ParentShardId') not in listed]

"""The old home of the Kinesis reader, now `transforms.kinesis`, kept only so
that checkpoints and savepoints taken before the move still restore.

A runner's checkpoint holds the read's elements and restrictions as Beam's
default coder wrote them: pickled, each type named by its module and class
(`transforms.kinesis_source.ShardRestriction`, ...). Unpickling imports this
module, which hands over the same types from their new home; state written
from now on names the new one. Import from `transforms.kinesis` instead.
"""

from transforms.kinesis.restriction import KinesisShard, ShardCursor, ShardRestriction, StartPosition

__all__ = ['KinesisShard', 'ShardCursor', 'ShardRestriction', 'StartPosition']

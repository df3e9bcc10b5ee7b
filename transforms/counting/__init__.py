"""The counting core: flow log lines to the distinct peers of each address,
per event-time window and group.

    rules.py     what a countable line is, and the scan of a batch (its C twin: _scan.c)
    addresses.py address keys: addresses as integers, and back to text
    peers.py     compact peer pairs, their shards, peer counts, and their coders
    late.py      the too-late check and the dead letters of too-late flows
    count.py     CountDistinctPeers: the thin DoFns and the combines
"""

"""The reference receiver's parts that are not HTTP plumbing: what a POST must
carry (`contract`), how panes and parts become documents (`ledger`), the SQLite
store behind the viewer (`store`), the fan-out jump rule (`jumps`), the JSON API
(`api`) and the page's assets (`static/`). Not shipped (see `devtools`)."""

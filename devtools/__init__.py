"""Development helpers that do not ship with the product: the demo behind
`./run_local.sh`, the reference receiver, the AWS emulator helpers, the report
and the sample data. Tests, the benchmark and the demo use them; the wheel and
the images leave them out (setup.py packages only `pipeline` and `transforms`)."""

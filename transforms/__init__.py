"""Beam transforms of vpc-flow-peers: decoding, parsing, windowed peer counting,
dead letters and HTTP delivery."""

# The namespace of every Beam counter this project reports.
METRICS_NAMESPACE = 'vpc_flow_peers'

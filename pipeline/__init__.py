"""vpc-flow-peers: the pipeline's options, builder and command line."""

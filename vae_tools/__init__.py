"""Tools above both backends: the parity checker, the trainer front-end, the benchmark, the CLI."""

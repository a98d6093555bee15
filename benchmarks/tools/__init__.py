"""Tools that make the models and data the benchmarks and tests use (not benchmarks)."""

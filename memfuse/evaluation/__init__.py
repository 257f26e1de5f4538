"""Retrieval quality on public benchmarks (LoCoMo), measured with the library itself."""

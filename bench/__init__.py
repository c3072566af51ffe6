"""Benchmarks: our code against its own ceilings, measured in the same run on the same machine."""

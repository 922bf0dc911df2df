"""Throughput benchmarks of ibjax's training step; see benchmarks/README.md."""

"""Benchmarks: `pdspace-bench step|sweep|compile|table|replay` (speed, memory, design tables, search replay)."""

"""Speed and memory benchmarks: `python -m pdspace.bench step|sweep`."""

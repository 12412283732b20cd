"""Side-by-side benchmarks: ``python -m bench [NAME]`` (``make bench NAME=...``)."""

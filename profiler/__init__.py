"""hatprof profiler: design spaces, SubTransformers, export, timing and latency datasets."""

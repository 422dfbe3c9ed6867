"""click commands of the profiler: one module per command or group."""

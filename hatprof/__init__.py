"""The hatprof app: the command line, the demo and opening a device by name.

The top floor: it imports the libraries (`profiler`, `device_agents`, `predictor`, `nas`)
and no library imports it.
"""

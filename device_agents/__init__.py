"""hatprof device agents: the HTTP agent that times artifacts on a device, its client,
the device inventory, and fleet collection over many devices.

The agent side (`agent`, `store`, `worker`, `wire`) imports only the standard library,
numpy, onnxruntime and psutil (and onnx when it is installed), never torch, pandas or
scikit-learn.
"""

"""The ops, one module each: a float64 reference, the torch path (CPU/GPU) and the Triton kernel where it has one.
The dispatch points that pick an implementation by device are in ``embedx.kernels.dispatch``."""

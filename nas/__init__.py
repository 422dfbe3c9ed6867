"""hatprof nas: the bundled task, a weight-sharing SuperTransformer, its training, and search."""

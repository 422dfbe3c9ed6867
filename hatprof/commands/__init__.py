"""click commands of the `hatprof` CLI: one module per command or group of commands."""

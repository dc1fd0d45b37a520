"""Development helpers shared by `tests/` and `benchmarks/`: the reference runner and the
loopback services both start. Not part of the `surgray` package (the wheel carries only
`surgray*`); importable from the repository root, which pytest and the benchmarks put first on
`sys.path`."""

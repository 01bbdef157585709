"""The `fedssl` command line (parse, dispatch); simulation, presets, sweeps, the empirical audit."""

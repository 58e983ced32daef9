"""Hardware-aware mixed precision (HAWQ-V3 §3.4): per-layer sensitivities, sizes, BOPS and
latencies measured by intq, and the ILP that picks 4 or 8 bits per layer under any set of
size, BOPS and latency limits (`intq allocate`). A consumer of the float graph: pulp and
torch live here, not in the core."""

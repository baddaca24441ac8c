"""The one exception of the benchmark harness.

`BenchmarkError` means that a benchmark could not measure what it set out to:
a server did not start, a load generator is missing, a drain did not finish
in its time limit. Its message names the cause and where to look, usually a
log file. The harness prints it, stops that benchmark's servers and goes on
with the next benchmark.
"""


class BenchmarkError(Exception):
    """A benchmark could not complete its measurement."""

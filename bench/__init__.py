"""The benchmark harness: faashub's hot paths measured against raw baselines.

Run it from the repository root with the project's virtualenv:

    python -m bench run [NAME ...] [--smoke] [--runs N]

Each benchmark starts its own servers on free ports of 127.0.0.1, measures
a raw baseline and faashub alternately in several runs, prints the median,
min and max of each side and their ratio, and writes a JSON record to
`bench/results/`. docs/benchmarks.md explains the benchmarks and records the
latest results. The tests run every benchmark in smoke mode
(tests/test_bench_smoke.py) but never check a number.
"""

"""One command for every performance claim: run the benchmarks side by side, print a table, plot."""

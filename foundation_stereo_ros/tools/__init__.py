"""Command-line programs: infer a pair, evaluate a bag, benchmark, export."""

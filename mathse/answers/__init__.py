"""Answers and benchmarks: extracting and scoring final answers, eval sets and their results."""

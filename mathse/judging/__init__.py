"""Judging paths: the ORM's prompt/verdict contract, its score, its training data, the judge, steps."""

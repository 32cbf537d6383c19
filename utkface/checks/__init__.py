"""Data checks: the Great Expectations suites of the `validate` stage."""

"""Scoring: test metrics, subgroup reports and figures."""

"""Tabular data helpers: column metadata shared by generators and metrics."""

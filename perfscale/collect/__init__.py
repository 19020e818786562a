"""Collectors: built-in kernels, command runner with rusage, machine metadata."""

"""Eager reference implementation of the official Wan2.1 math (the oracle for every optimization)."""

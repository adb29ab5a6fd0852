"""Dagster wiring, one module per asset group. Domain logic lives outside this package."""

"""Telemetry in: landing files -> validation -> quarantine / the raw_earnings store -> the feature table.

``run.ingest_landing`` is the one call the ``raw_earnings`` asset makes; ``store`` is the only module that
touches the ingestion tables (other areas read telemetry through its functions). Layout: docs/DATA.md.
"""

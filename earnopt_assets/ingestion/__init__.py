"""Telemetry in: landing files, validation, quarantine, the raw_earnings store and the feature snapshot."""

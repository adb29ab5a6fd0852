"""Asset group: ingestion. (Placeholder until its issue lands.)"""

import dagster as dg

assets: list = []
asset_checks: list = []
jobs: list = []
schedules: list = []
sensors: list = []

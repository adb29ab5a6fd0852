"""earnopt: forecast, watch and allocate a host's resources across earning protocols.

The Dagster code location loads ``defs`` from here (see workspace.yaml).
"""

from earnopt_assets.definitions import defs

__all__ = ["defs"]

"""earnopt: forecast, watch and allocate a host's resources across earning protocols.

Deliberately empty: importing a submodule (the client, features, the predictor) must not build the Dagster
definitions. The code location loads ``earnopt_assets.definitions`` (see workspace.yaml).
"""

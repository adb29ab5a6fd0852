"""The earnopt ML service: FastAPI over the model store and the DuckDB warehouse the assets write.

``earnopt serve`` runs :func:`earnopt_assets.service.app.run_server`; tests and embedders call
:func:`earnopt_assets.service.app.create_app`. Nothing in this package imports TensorFlow at import time.
"""

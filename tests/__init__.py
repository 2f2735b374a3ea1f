"""The test suite (a regular package: a top-level ``tests`` that a PyPI wheel ships must not shadow it)."""

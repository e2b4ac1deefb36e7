"""Integration tests against the real tools (see conftest.py)."""

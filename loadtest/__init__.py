"""Locust load tests of the served catsdogs model, used as a quality gate (`python -m loadtest --help`)."""

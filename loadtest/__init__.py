"""Locust load tests of the served catsdogs model, used as a quality gate (`make loadtest`, loadtest/locustfile.py)."""

"""Production monitoring of the served catsdogs model: logs, Prometheus alerts, Grafana, live evaluation, drift."""

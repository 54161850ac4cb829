"""Serving catsdogs with TorchServe: archive building, start/stop/readiness, and a token-aware client."""

"""HTTP JSON API (`/api/*`), the dashboard (`/`), Prometheus text (`/metrics`) and `/healthz`."""
from proxy.api.server import api_token, create_api, start_api

__all__ = ["api_token", "create_api", "start_api"]

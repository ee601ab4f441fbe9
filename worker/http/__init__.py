"""HTTP layer: Litestar app over the Engine (no device knowledge here)."""

from worker.http.app import ServiceConfig, create_app

__all__ = ["ServiceConfig", "create_app"]

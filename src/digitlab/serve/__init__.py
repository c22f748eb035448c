"""The web service: a FastAPI REST API and a draw-a-digit page (``digitlab serve``)."""

from digitlab.serve.app import DEFAULT_MAX_UPLOAD_BYTES, create_app

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "create_app"]

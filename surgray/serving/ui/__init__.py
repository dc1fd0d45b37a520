"""The review-and-correct web page: static files shipped in the package, and its JSON API.

`build_ui_router` returns the routes `http_app.build_app` mounts: the page at `/` and `/ui`
(no data in it, so no auth), and `/ui/api/...` behind the same bearer token as `/v1`.
"""

from surgray.serving.ui.router import build_ui_router

__all__ = ["build_ui_router"]

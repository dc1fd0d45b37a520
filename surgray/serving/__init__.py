"""Ray-free serving library for online (referring) segmentation over HTTP.

Modules, one job each: `config` (ServeConfig), `auth` (bearer tokens), `errors` (ApiError and
its JSON rendering, body-size limit), `schemas` (v1 request/response models), `images` (frame
upload validation and decoding), `routing` (replica identity, session ids, how to route a
session to its replica under Ray Serve), `sessions` (bounded session store), `backend` (the
contract a tracker adapter implements), `results` (mask encoding), `service` (the logic), and
`http_app` (the FastAPI app). `serve/app.py` only wires Ray Serve to these.
"""

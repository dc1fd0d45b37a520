"""The Ray Serve application of surgray (`serve run serve.app:app`); logic lives in surgray."""

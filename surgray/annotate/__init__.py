"""The archive annotation job, without Ray: configuration, manifests, work planning,
provenance and the idempotent output layout. `jobs/annotate.py` wires these to Ray Data.

Modules import nothing heavy at import time; pyarrow, fsspec and PyAV load inside functions.
"""

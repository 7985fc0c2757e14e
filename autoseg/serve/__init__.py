"""``autoseg serve``: a local web page to upload a CT, follow its prediction and browse the result.

:mod:`~autoseg.serve.app` (FastAPI routes), :mod:`~autoseg.serve.jobs` (job folders and the one
worker thread), :mod:`~autoseg.serve.slices` (PNG slices), :mod:`~autoseg.serve.security` (upload
checks) and ``static/`` (the page). Importing this package imports none of them.
"""

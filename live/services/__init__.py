"""Live services, each a ``BusService`` built by a factory ``(cfg, endpoints, **overrides)``.

See ``live.runner`` for the registry (``awet live``) and how several run in one process.
"""

"""Live services, each a ``BusService`` built by a factory ``(cfg, endpoints, **overrides)``.

See ``live.registry`` for the registry (``awet live``) and ``live.supervisor`` for how several run in one process.
"""

"""The HTTP and WebSocket routes, one module per area, each a :class:`aiohttp.web.RouteTableDef` named
``routes`` whose handlers find the server through ``request.app[SERVER_KEY]``:

* :mod:`.prompts`   ``/prompt``, cancel, requeue, ``/interrupt``, ``/free``
* :mod:`.history`   ``/queue`` and ``/history``
* :mod:`.files`     ``/view``, ``/upload/image``, ``/upload/mask``
* :mod:`.meta`      ``/object_info``, ``/models``, ``/embeddings``, ``/system_stats``, ``/features``,
  ``/notices``, ``/health``, ``/ready``
* :mod:`.workflows` ``/workflow/convert``, ``/workflows/default``
* :mod:`.settings`  ``/settings``
* :mod:`.ws`        ``/ws``
* :mod:`.editor`    the editor's files (``web/``), the catch-all served last

:func:`server.app.create_app` mounts the API tables at ``/path`` and ``/api/path``.
"""

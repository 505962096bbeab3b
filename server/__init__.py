"""The Loom process: command line, HTTP/WebSocket server, durable queue, and the graph engine."""

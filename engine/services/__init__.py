"""Worker processes over IPC: the socket, one connection per worker, the registry that
picks a worker for a call, the supervisor, the routes that forward to services."""

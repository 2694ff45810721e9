"""The HTTP side of a client connection: the pump over protocol.http.HttpConn and the
hand-off to WebSocket."""

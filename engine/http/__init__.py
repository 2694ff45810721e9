"""The HTTP side of a client connection: the pump over protocol.http.HttpConn
(protocol.py), admission (caps, request rate), timeouts, and the hand-off to WebSocket."""

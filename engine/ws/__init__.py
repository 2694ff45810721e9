"""One upgraded connection: the pump over protocol.ws.WsConn (protocol.py) and its jobs,
one module each: facade, outbound cork, lossy backlog, inbound queue, guards, timers."""

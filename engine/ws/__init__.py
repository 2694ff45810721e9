"""One upgraded connection: the pump over protocol.ws.WsConn, its outbound cork, lossy
backlog, inbound queue and guards."""

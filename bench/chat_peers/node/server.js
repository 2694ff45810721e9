// The Node socket.io peer of bench/chat.py: the same chat as bench/chat_service.py.
//
//   node server.js PORT        (listens on 127.0.0.1:PORT until SIGTERM or SIGINT)
//
// A client connects to /socket.io/?EIO=4&transport=websocket&room=R: the connection
// handler joins it to R and emits "chat.joined" {room}. "chat.send" {room, message}
// with an ack callback is validated (room: a string the socket joined; message: a
// non-empty string of at most 1,000 characters), emitted to the room, sender included,
// as "chat.message" {id, room, from, message}, and acked with {id}; an invalid one is
// acked with {error} and not emitted. WebSocket transport only, no compression (the
// socket.io default), default ping interval.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

const MAX_MESSAGE = 1000;
const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error("usage: node server.js PORT");
  process.exit(2);
}

const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
});

let nextId = 0;

function invalid(data, socket) {
  if (data === null || typeof data !== "object") return "data must be an object";
  const { room, message } = data;
  if (typeof room !== "string" || room.length === 0) return "room is required";
  if (typeof message !== "string" || message.length === 0 || message.length > MAX_MESSAGE) {
    return `message must be 1 to ${MAX_MESSAGE} chars`;
  }
  if (!socket.rooms.has(room)) return "join the room first";
  return null;
}

io.on("connection", (socket) => {
  const room = socket.handshake.query.room;
  if (typeof room !== "string" || room.length === 0 || room.length > 100) {
    socket.disconnect(true);
    return;
  }
  socket.join(room);
  socket.emit("chat.joined", { room });
  socket.on("chat.send", (data, ack) => {
    if (typeof ack !== "function") return;
    const error = invalid(data, socket);
    if (error !== null) {
      ack({ error });
      return;
    }
    nextId += 1;
    io.to(data.room).emit("chat.message", {
      id: nextId,
      room: data.room,
      from: socket.id,
      message: data.message,
    });
    ack({ id: nextId });
  });
});

httpServer.listen({ port, host: "127.0.0.1", backlog: 4096 }, () => {
  console.log(`socket.io ${require("socket.io/package.json").version} on 127.0.0.1:${port}`);
});

function stop() {
  io.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

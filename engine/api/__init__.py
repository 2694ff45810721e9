"""The handler API embedders and services program against: Request, Response,
WebSocketEndpoint, Routes. Imports nothing of the engine above it."""

"""Rooms, connections by id and by user, the Publish value, fan-out."""

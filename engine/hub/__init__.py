"""Rooms, connections by id and by user, the local delivery and fan-out of a publish."""

"""Peer servers of ``bench/chat.py``: python-socketio (here) and Node socket.io (``node/``)."""

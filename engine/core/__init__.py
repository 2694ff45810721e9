"""What everything else stands on: the timer wheel, the corker, metrics. Imports nothing
of the engine above it."""

"""Rate limits, connection caps and slow-consumer policies: pure bookkeeping."""

"""Where a publish is numbered and how it reaches every node (local, Redis); presence."""

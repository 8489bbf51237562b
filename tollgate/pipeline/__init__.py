"""The request path, one module per stage: guard, identify, match, admit, route and forward (the attempt loop), account."""

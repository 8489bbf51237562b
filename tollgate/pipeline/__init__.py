"""The request path: the handler runs one module per stage (guard, identify, match, admit, route and forward, account)."""

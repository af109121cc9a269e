"""The engine process: the server that answers requests and the session that dispatches them to the rooms."""

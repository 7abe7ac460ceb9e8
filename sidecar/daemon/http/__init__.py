"""The daemon's HTTP face: the handler, its guards, its error table, the token, the sockets."""

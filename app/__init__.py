"""slopewatch user interfaces: the command line (and the web app)."""

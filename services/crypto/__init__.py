"""The crypto service: the only process that opens the identity key file."""

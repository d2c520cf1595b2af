"""The `tom` command and the Python client side of a ToM node."""

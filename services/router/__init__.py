"""The router service: routing, topology, discovery, message tracking and the app API."""

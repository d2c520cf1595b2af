"""QUIC transport: the node's one UDP socket and its peer connections.

QUIC arrives with its own issue."""

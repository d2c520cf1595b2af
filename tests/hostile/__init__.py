"""The hostile-peer suite: every attack of docs/security.md run against whole nodes (real
processes, sockets and QUIC), each asserting that the node refuses or bounds it, that the
matching counter moves and that a legitimate peer keeps being served."""

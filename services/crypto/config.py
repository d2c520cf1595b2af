from shared.config import Section


class CryptoConfig(Section):
    """The crypto service: the node's identity key, which no other service reads."""

    key_file: str = "identity.key"
    """Identity seed file (raw 32 bytes, mode 0600), relative to the data directory unless absolute.
    """

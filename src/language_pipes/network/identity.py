"""A node's identity: an Ed25519 signing key pair per node id, kept on disk.

The key is created on first use under ``$LP_APP_DIR/credentials/<node_id>.key``
(mode 0600). Its public half is what other nodes pin to the node id
(trust on first use, see :mod:`language_pipes.network.membership`).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from language_pipes.network.types import NodeId
from language_pipes.paths import credentials_dir

_SAFE_FILE_STEM = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class NodeIdentity:
    """The node id and the private key that proves it."""

    node_id: NodeId
    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    @staticmethod
    def generate(node_id: str) -> NodeIdentity:
        """A fresh identity that lives only in memory (tests, throwaway nodes)."""
        return NodeIdentity(NodeId(node_id), Ed25519PrivateKey.generate())


def signature_is_valid(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is ``public_key``'s signature of ``message``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        # InvalidSignature: forged or corrupted; ValueError: not a valid 32-byte key.
        return False
    return True


def key_file_for(node_id: str, directory: Path | None = None) -> Path:
    """The key file of ``node_id``; ids that are not safe file names are hashed."""
    folder = directory if directory is not None else credentials_dir()
    stem = (
        node_id
        if _SAFE_FILE_STEM.fullmatch(node_id)
        else "id-" + hashlib.sha256(node_id.encode()).hexdigest()[:32]
    )
    return folder / f"{stem}.key"


def load_or_create_identity(node_id: str, directory: Path | None = None) -> NodeIdentity:
    """Read the node's key, creating it (mode 0600) on first run."""
    path = key_file_for(node_id, directory)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return NodeIdentity(NodeId(node_id), key)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # O_EXCL: if another process created the file a moment ago, use theirs instead.
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Lost the race to a concurrent first run of the same node id: read its key.
        return load_or_create_identity(node_id, directory)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    return NodeIdentity(NodeId(node_id), key)

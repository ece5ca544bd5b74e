"""Secrets in the fleet: inline, from the environment, from a file, or Ansible Vault.

A Secret never shows its value: not in ``repr``, not in errors, not in dumps.
The value is read only when something really needs it (``reveal``), so a fleet
can be validated and planned on a machine that does not hold the secrets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from wakegrid.yamlsource import VaultValue

VAULT_PASSWORD_ENV = ("WAKEGRID_VAULT_PASSWORD_FILE", "ANSIBLE_VAULT_PASSWORD_FILE")


class SecretError(RuntimeError):
    """A secret could not be read (the message names the source, never the value)."""


class Secret:
    __slots__ = ("_file", "_inline", "_vault", "env")

    def __init__(
        self,
        *,
        inline: str | None = None,
        env: str | None = None,
        file: str | None = None,
        vault: VaultValue | None = None,
    ):
        given = [value for value in (inline, env, file, vault) if value is not None]
        if len(given) != 1:
            raise ValueError("a secret has exactly one source: a string, {env: VAR}, {file: PATH} or !vault")
        self._inline = inline
        self.env = env
        self._file = file
        self._vault = vault

    @classmethod
    def parse(cls, value: Any) -> Secret:
        """Build a Secret from what a fleet file may hold; ValueError says what is wrong."""
        if isinstance(value, Secret):
            return value
        if isinstance(value, VaultValue):
            return cls(vault=value)
        if isinstance(value, str):
            if not value:
                raise ValueError("secret is empty")
            return cls(inline=value)
        if isinstance(value, dict) and len(value) == 1:
            ((kind, source),) = value.items()
            if kind in ("env", "file") and isinstance(source, str) and source:
                return cls(**{kind: source})
        raise ValueError("a secret is a string, {env: VAR}, {file: PATH} or an Ansible Vault (!vault) value")

    @property
    def source(self) -> str:
        """Where the secret comes from, safe to print."""
        if self.env is not None:
            return f"env:{self.env}"
        if self._file is not None:
            return f"file:{self._file}"
        if self._vault is not None:
            return "vault"
        return "inline"

    @property
    def file(self) -> str | None:
        return self._file

    @property
    def vault_ciphertext(self) -> str | None:
        return self._vault.ciphertext if self._vault else None

    def reveal(self) -> str:
        if self._inline is not None:
            return self._inline
        if self.env is not None:
            try:
                return os.environ[self.env]
            except KeyError:
                raise SecretError(f"environment variable {self.env} is not set") from None
        if self._file is not None:
            try:
                return Path(self._file).expanduser().read_text().rstrip()  # as Ansible's file lookup
            except OSError as exc:
                raise SecretError(f"cannot read secret file {self._file}: {exc.strerror}") from None
        return _decrypt_vault(self._vault.ciphertext)  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"Secret({self.source})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return (self._inline, self.env, self._file, self._vault) == (
            other._inline,
            other.env,
            other._file,
            other._vault,
        )

    def __hash__(self) -> int:
        return hash((self._inline, self.env, self._file, self._vault))


def _decrypt_vault(ciphertext: str) -> str:
    from ansible.parsing.vault import VaultLib, VaultSecret  # ansible is heavy: import on use only

    password_file = next((os.environ[name] for name in VAULT_PASSWORD_ENV if os.environ.get(name)), None)
    if not password_file:
        raise SecretError(f"a !vault secret needs a vault password file: set {' or '.join(VAULT_PASSWORD_ENV)}")
    try:
        password = Path(password_file).expanduser().read_bytes().strip()
    except OSError as exc:
        raise SecretError(f"cannot read vault password file {password_file}: {exc.strerror}") from None
    try:
        plaintext = VaultLib([("default", VaultSecret(password))]).decrypt(ciphertext.encode())
    except Exception as exc:  # ansible raises AnsibleError subclasses whose text never holds the plaintext
        raise SecretError(f"cannot decrypt !vault secret: {exc}") from None
    return plaintext.decode()

"""Secrets in the fleet: inline, from the environment, from a file, or Ansible Vault.

A Secret never shows its value: not in ``repr``, not in errors, not in dumps.
The value is read only when something really needs it (``reveal``), so a fleet
can be validated and planned on a machine that does not hold the secrets.

Each secret of a loaded fleet knows where it is written (``where``, a fleet path like
``nodes.pve1.proxmox.token_secret``): errors name it, and Ansible refers to a secret by it
(the ``wakegrid.fleet.fleet_secret`` lookup), so the inventory never holds a value.
"""

from __future__ import annotations

import functools
import os
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from wakegrid.yamlsource import VaultValue

VAULT_PASSWORD_ENV = ("WAKEGRID_VAULT_PASSWORD_FILE", "ANSIBLE_VAULT_PASSWORD_FILE")


class SecretError(RuntimeError):
    """A secret could not be read (the message names the source, never the value)."""


class Secret:
    __slots__ = ("_file", "_inline", "_vault", "env", "where")

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
        # The fleet path of this secret, set when its fleet is loaded (see walk_secrets).
        self.where: str | None = None

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

    def reveal(self, decrypt_vault: Callable[[str], str] | None = None) -> str:
        """The value, read now; SecretError names where the secret is and its source, never a value.

        ``decrypt_vault`` turns a !vault ciphertext into its plaintext (Ansible passes the vault
        secrets of its run); by default the password file of VAULT_PASSWORD_ENV is used.
        """
        try:
            return self._read(decrypt_vault or _decrypt_vault)
        except SecretError as exc:
            if self.where is None:
                raise
            raise SecretError(f"{self.where}: {exc}") from None

    def _read(self, decrypt_vault: Callable[[str], str]) -> str:
        if self._inline is not None:
            return self._inline
        if self.env is not None:
            # Unset or empty is an error, never an empty secret that fails later, far from here.
            value = os.environ.get(self.env)
            if value is None:
                raise SecretError(f"environment variable {self.env} is not set")
            if not value:
                raise SecretError(f"environment variable {self.env} is empty")
            return value
        if self._file is not None:
            try:
                value = Path(self._file).expanduser().read_text().rstrip()  # as Ansible's file lookup
            except OSError as exc:
                raise SecretError(f"cannot read secret file {self._file}: {exc.strerror}") from None
            except UnicodeDecodeError:  # its message quotes bytes of the file
                raise SecretError(f"secret file {self._file} is not UTF-8 text") from None
            if not value:
                raise SecretError(f"secret file {self._file} is empty")
            return value
        try:
            return decrypt_vault(self._vault.ciphertext)  # type: ignore[union-attr]
        except SecretError:
            raise
        except Exception as exc:  # vault errors never hold the plaintext
            raise SecretError(f"cannot decrypt !vault secret: {exc}") from None

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
    return VaultLib([("default", VaultSecret(password))]).decrypt(ciphertext.encode()).decode()


# --------------------------------------------------------------------------- secrets of a fleet


def walk_secrets(value: Any) -> list[tuple[tuple[str | int, ...], Secret]]:
    """Every Secret in a validated model, with its location (as pydantic's ``loc``), in file order."""
    found: list[tuple[tuple[str | int, ...], Secret]] = []
    _collect(value, [], found)
    return found


def _collect(item: Any, loc: list[str | int], found: list[tuple[tuple[str | int, ...], Secret]]) -> None:
    # One shared loc list, copied only at a secret: 17,000 nodes are walked in tens of milliseconds.
    if isinstance(item, Secret):
        found.append((tuple(loc), item))
        return
    if isinstance(item, BaseModel):
        children: Iterable[tuple[str | int, Any]] = ((name, getattr(item, name)) for name in _secret_fields(type(item)))
    elif isinstance(item, dict):
        children = item.items()
    elif isinstance(item, (list, tuple)):
        children = enumerate(item)
    else:
        return
    for key, child in children:
        if child is not None:
            loc.append(key)
            _collect(child, loc, found)
            loc.pop()


def secret_at(fleet: BaseModel, where: str) -> Secret:
    """The secret of a loaded fleet at the fleet path ``where`` (like ``nodes.pve1.proxmox.token_secret``)."""
    known = [secret for dummy, secret in walk_secrets(fleet)]
    for secret in known:
        if secret.where == where:
            return secret
    paths = ", ".join(sorted(str(secret.where) for secret in known)) or "none"
    raise SecretError(f"the fleet has no secret at {where} (its secrets: {paths})")


@functools.cache
def _secret_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of ``model`` whose type can hold a Secret: a walk visits only those."""
    return tuple(name for name, field in model.model_fields.items() if _may_hold_secret(field.annotation))


def _may_hold_secret(annotation: Any, seen: frozenset[Any] = frozenset()) -> bool:
    if annotation is Secret:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation in seen:
            return False
        return any(
            _may_hold_secret(field.annotation, seen | {annotation}) for field in annotation.model_fields.values()
        )
    if annotation is Any:
        return False  # free-form sections (compose, groups) hold no secret
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _may_hold_secret(typing.get_args(annotation)[0], seen)
    if origin is not None or isinstance(annotation, types.UnionType):
        return any(_may_hold_secret(arg, seen) for arg in typing.get_args(annotation))
    return False

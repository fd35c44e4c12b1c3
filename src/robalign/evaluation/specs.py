"""Spec text in, safe text out: the one reader of mapping specs (model and judge specs alike),
the refusal of secrets written into a spec or an option, and URL redaction.

A secret belongs in the environment: a spec names the variable (``api_key_env: NAME``) and
never holds the value. Whatever is shown or stored (spec labels, a backend's identity and
so the cache's ``model`` column, summaries, ``repr``, error messages) passes every URL
through ``redact_url``, because a key can still ride in a URL: as user info
(``https://user:KEY@host/v1``) or in the query (``https://host/v1?api_key=KEY``). The URL
itself is still used, unredacted, for the requests.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from robalign.errors import UserError

REDACTED = "***"

# Option names whose value can only be a secret. Compared after lower-casing and mapping
# "-" to "_"; ``api_key_env`` (the *name* of a variable) is the supported way.
SECRET_OPTIONS = frozenset({
    "api_key", "apikey", "key", "token", "api_token", "access_token", "auth_token", "bearer", "authorization",
    "auth", "secret", "secret_key", "client_secret", "password", "passwd",
})

# a URL of any scheme inside free text (a spec string, a CLI argument); ends at whitespace,
# quotes, braces and commas
_URL_IN_TEXT = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>{},]+", re.IGNORECASE)
_OPTION_PAIR = re.compile(r"^\s*([\w.-]+)\s*=")


def is_secret_option(name: object) -> bool:
    return str(name).strip().lower().replace("-", "_") in SECRET_OPTIONS


def _secret_paths(options: Mapping, prefix: str = "") -> Iterator[str]:
    for name, value in options.items():
        path = f"{prefix}{name}"
        if is_secret_option(name):
            yield path
        elif isinstance(value, Mapping):  # extra_body: {api_key: ...} is as leaky as the top level
            yield from _secret_paths(value, path + ".")


def reject_secrets(options: Mapping, where: str) -> None:
    """Raise a UserError if any key of ``options`` (nested mappings included) names a secret.
    The message names the key, never its value."""
    found = list(_secret_paths(options))
    if found:
        raise UserError(
            f"{where}: '{found[0]}' would put a secret into the spec, from where it can reach logs, "
            "summaries and the cache. Keep the key in an environment variable and name the variable "
            "instead: api_key_env: NAME (e.g. export DEEPSEEK_API_KEY=... and -o api_key_env=DEEPSEEK_API_KEY)"
        )


def is_mapping_text(spec: object) -> bool:
    """A spec string written as a YAML / JSON mapping: ``{...}`` or several lines."""
    return isinstance(spec, str) and (spec.lstrip().startswith("{") or "\n" in spec.strip())


def load_spec(spec: Any, what: str, example: str) -> Any:
    """The mapping a YAML / JSON mapping string holds; any other value unchanged.

    Invalid YAML is a UserError with the line and column of the problem, naming ``what``
    (e.g. "--judge spec") and showing ``example``; it does not echo the text, which may hold
    a secret. A mapping's keys are checked with ``reject_secrets``."""
    if is_mapping_text(spec):
        import yaml

        try:
            spec = yaml.safe_load(spec)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or "cannot be read"
            raise UserError(f"{what} is not valid YAML ({problem}{where}); write a mapping such as "
                            f"{example}, with quotes around values that hold ':' or '#'") from None
        if not isinstance(spec, dict):
            raise UserError(f"{what} must be a mapping such as {example}, not a YAML {type(spec).__name__}")
    if isinstance(spec, Mapping):
        reject_secrets(spec, what)
    return spec


def redact_url(url: str) -> str:
    """``https://user:pw@host:8443/v1?api_key=K#x`` -> ``https://***@host:8443/v1?***#x``.

    User info and the whole query go (a parameter's *name* can itself be the key); scheme,
    host, port, path and fragment stay, so the URL still says where requests went."""
    try:
        parts = urlsplit(str(url))
    except ValueError:  # e.g. an unbalanced IPv6 bracket: show nothing of it
        return REDACTED
    netloc = parts.netloc
    if "@" not in netloc and not parts.query:
        return str(url)  # nothing to hide; urlunsplit would turn sqlite:///x into sqlite:/x
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = REDACTED if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_urls(text: str) -> str:
    """``text`` with every URL in it passed through ``redact_url``."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def redact_value(value: Any) -> Any:
    """A CLI argument or option value made safe to store: URLs redacted in every string,
    secret-named keys of mappings replaced by ``***`` (lists and mappings walked)."""
    if isinstance(value, str):
        option = _OPTION_PAIR.match(value)  # "-o api_key=..." as argparse stored it
        return f"{option[1]}={REDACTED}" if option and is_secret_option(option[1]) else redact_urls(value)
    if isinstance(value, Mapping):
        return {k: REDACTED if is_secret_option(k) else redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value

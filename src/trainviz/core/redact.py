"""Secrets out of the run manifest: a command line, hyperparameters and any string lose their credentials before
anything is written.

Three rules, applied by a :class:`Redactor` (the value becomes ``***``, the path of each redacted value is kept in
``redactor.redacted``, never the value):

* **Names that mark a secret.** A name is split into parts on every character that is not a letter or digit
  (``_``, ``-``, ``.``, ...) and at camelCase boundaries, in lower case: ``AWS_SECRET_ACCESS_KEY``,
  ``awsSecretAccessKey`` and ``aws.secret-access.key`` all give ``aws secret access key``. A name is a secret
  when a pattern's parts appear in it, in order and next to each other (:data:`SECRET_NAMES`: ``api key``,
  ``access key``, ``secret``, ``password``, ``passwd``, ``pwd``, ``credential``, ``auth token``, ``bearer``,
  ``private key``, ``passphrase``, ``authorization``; the last part may also end in ``s``, so ``secrets`` and
  ``api_keys`` count; the one-word spellings ``apikey``, ``accesskey``, ``secretkey``, ``authtoken``,
  ``accesstoken`` and ``privatekey`` count too). ``token`` alone is special: it counts only as the whole name
  or its last part (``token``, ``hf_token``, ``access_token``), and not after a part of
  :data:`HARMLESS_TOKENS` (``class_token``, ``cls_token``, ``pad_token``, ``mask_token``, ... are model
  settings, not credentials); ``tokens`` never counts (``num_prefix_tokens``). Whole parts only: ``key_dim``,
  ``keypoints`` and ``author`` are not secrets. Under a secret name every value is redacted but ``True``,
  ``False`` and ``None`` (``use_auth_token=True`` holds no secret), containers included, leaf by leaf.
* **Credentials inside strings**, anywhere in any string: the password of ``scheme://user:password@host``
  (``user:***@``; for ``http``, ``https``, ``git+https`` and ``ftp`` a user name alone is redacted too, as
  ``https://TOKEN@github.com`` is how tokens ride in git remotes), query and fragment parameters whose name is a
  secret or one of :data:`URL_SECRET_NAMES` (``?token=``, ``&api_key=``, ``&sig=``, ``&X-Amz-Signature=``,
  ``&key=``), ``name=value`` and ``name: value`` with a secret name (a ``repr``, a DSN such as
  ``host=db password=...``), and the token after ``Bearer`` or ``Basic``.
* **A command line** (:meth:`Redactor.argv`): ``--name=value``, ``--name value`` (the next argument, unless it is
  itself an option ``--...``), Hydra-style ``a.b.password=value`` (with ``+``, ``++`` or ``~``) and
  ``NAME=value``, all by the name rule; an argument that is a JSON object or array is parsed, redacted
  structurally and written back (``json.dumps``) when something in it was redacted; every argument then gets the
  string rules.

Hyperparameters are redacted structurally, before they become strings (:meth:`Redactor.plain`): mappings
(``dict``, Lightning's ``AttributeDict``), lists, tuples and sets, dataclasses, ``argparse.Namespace``, OmegaConf
``DictConfig`` / ``ListConfig`` (interpolations left unresolved, so ``${oc.env:TOKEN}`` stays as written) and
pydantic models at any depth; anything else is stored as its ``repr``, which then gets the string rules.

Pure Python: no Lightning, no torch.

Example:
    >>> r = Redactor()
    >>> r.argv(["train.py", "--api-key=abc", "--db", "postgresql://me:hunter2@db/x", "model.s3.password=p"])
    ['train.py', '--api-key=***', '--db', 'postgresql://me:***@db/x', 'model.s3.password=***']
    >>> r.plain({"s3": {"secret_access_key": "k", "bucket": "b"}, "class_token": "cls"}, "hparams")
    {'s3': {'secret_access_key': '***', 'bucket': 'b'}, 'class_token': 'cls'}
    >>> r.redacted
    ['argv[1]', 'argv[3]', 'argv[4]', 'hparams.s3.secret_access_key']
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from argparse import Namespace
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "HARMLESS_TOKENS",
    "REDACTED",
    "SECRET_NAMES",
    "URL_SECRET_NAMES",
    "Redactor",
    "check_patterns",
    "name_parts",
    "redact_manifest",
    "strip_url_credentials",
]

REDACTED = "***"

SECRET_NAMES: tuple[str, ...] = (
    "api_key",
    "access_key",
    "secret",
    "password",
    "passwd",
    "pwd",
    "credential",
    "auth_token",
    "bearer",
    "private_key",
    "passphrase",
    "authorization",
    # the same names written as one word
    "apikey",
    "accesskey",
    "secretkey",
    "authtoken",
    "accesstoken",
    "privatekey",
)
"""Name patterns that mark a secret (matched by whole parts; see the module docstring). ``token`` has its own
rule."""

HARMLESS_KEYS = frozenset(
    {
        *("sort", "dict", "cache", "image", "label", "input", "output", "target", "batch", "primary", "foreign"),
        *("data", "dataset", "metric", "monitor", "state", "group", "hash", "lookup", "map", "row", "column", "col"),
        *("index", "sample", "feature", "layer", "model", "query", "value", "attn", "attention", "partition"),
        *("shard", "split", "config", "log", "entry", "id", "name", "checkpoint", "ckpt", "class", "text", "mask"),
        *("rng", "prng", "random", "seed", "hot", "short", "partition", "join", "group", "cluster"),
    }
)
"""The words before a final ``key`` that make it no secret (``sort_key``, ``rng_key``, ``image_key``); any other
``<word>_key`` (``openai_key``, ``hf_key``, ``stripe_key``) is one. A lone ``key`` is not."""

HARMLESS_TOKENS = frozenset(
    {
        "class",
        "cls",
        "dist",
        "distill",
        "distillation",
        "reg",
        "register",
        "prefix",
        "mask",
        "pad",
        "padding",
        "special",
        "bos",
        "eos",
        "sep",
        "unk",
        "start",
        "end",
        "image",
        "img",
        "vision",
        "text",
        "query",
        "num",
        "max",
        "min",
        "n",
    }
)
"""Parts that make a name ending in ``token`` a model setting (``class_token``, ``pad_token``, ``num_token``)
rather than a credential."""

URL_SECRET_NAMES: tuple[str, ...] = ("sig", "signature", "key")
"""Query parameters redacted in URLs besides the secret names: signed-URL signatures (Azure ``sig``, S3
``X-Amz-Signature``, GCS ``X-Goog-Signature``) and Google's ``key``."""

_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^\s:/@?#]*):(?P<pw>[^\s/?#]*)@")
_LONE_USER = re.compile(r"(?P<scheme>\b(?:https?|git\+https?|ftps?)://)(?P<user>[^\s:/@?#]+)@", re.IGNORECASE)
_QUERY = re.compile(r"(?P<lead>[?&;#])(?P<name>[^=&;#\s?]+)=(?P<value>[^&;#\s]*)")
_ASSIGN = re.compile(
    r"(?<![\w.])(?P<q>[\"']?)(?P<name>[A-Za-z_][\w.\-]*)(?P=q)(?P<sep>\s*[=:]\s*)"
    r"(?P<value>\"[^\"]*\"|'[^']*'|[^\s,;&)\]}\"']+)"
)
_BEARER = re.compile(r"(?P<word>\b(?:bearer|basic)\s+)(?P<value>[A-Za-z0-9\-._~+/]+=*)", re.IGNORECASE)
# `--password hunter2` inside a recorded string (a shell command kept in a hyperparameter)
_SPACED_OPTION = re.compile(r"(?<![\w.\-])(?P<dash>--?)(?P<name>[A-Za-z][\w.\-]*)(?P<sep>\s+)(?P<value>[^\s\-][^\s]*)")
_OPTION_VALUE = re.compile(r"^(?P<dash>--?)(?P<name>[^=\s]+)=(?P<value>.*)$", re.DOTALL)
_OPTION = re.compile(r"^(?P<dash>--?)(?P<name>[A-Za-z][\w.\-]*)$")
_KEY_VALUE = re.compile(r"^(?P<lead>[+~]{0,2})(?P<name>[A-Za-z_][\w.\-/\[\]@]*)=(?P<value>.*)$", re.DOTALL)


def name_parts(name: str) -> tuple[str, ...]:
    """The lower-case parts of a name: split on every character that is not a letter or digit, and at camelCase
    boundaries.

    Example:
        >>> name_parts("AWS_SECRET_ACCESS_KEY"), name_parts("myAPIKey"), name_parts("--hf-token")
        (('aws', 'secret', 'access', 'key'), ('my', 'api', 'key'), ('hf', 'token'))
    """
    return tuple(p.lower() for chunk in re.split(r"[^A-Za-z0-9]+", str(name)) for p in _CAMEL.findall(chunk))


def check_patterns(value: Any) -> tuple[str, ...]:
    """The extra name patterns of ``redact=``: a string or a sequence of strings, each with a letter or digit.

    Raises:
        ValueError: anything else, named.
    """
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not all(isinstance(p, str) and name_parts(p) for p in items):
        raise ValueError(
            "Expected `redact` to be True, False, a name pattern or a list of name patterns (strings with a letter "
            f"or digit, e.g. ['wandb_key']), got {value!r}."
        )
    return tuple(items)


def _contains(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    n = len(pattern)
    *head, last = pattern
    for i in range(len(parts) - n + 1):
        if list(parts[i : i + n - 1]) == head and parts[i + n - 1] in (last, last + "s"):
            return True
    return False


class Redactor:
    """Applies the three rules (see the module docstring) and keeps the paths of what it redacted.

    Args:
        extra: more name patterns (matched by whole parts, like :data:`SECRET_NAMES`).
        enabled: ``False`` converts values to plain JSON values and redacts nothing.
    """

    def __init__(self, extra: Iterable[str] = (), enabled: bool = True) -> None:
        self.enabled = enabled
        self.extra = tuple(extra)
        self.patterns = tuple(name_parts(p) for p in (*SECRET_NAMES, *self.extra))
        self.url_patterns = (*self.patterns, *((p,) for p in URL_SECRET_NAMES))
        self.redacted: list[str] = []

    # Names ---------------------------------------------------------------------------------------
    def is_secret(self, name: Any, url: bool = False) -> bool:
        """Whether ``name`` marks a secret (``url``: a URL query parameter, which also counts
        :data:`URL_SECRET_NAMES`).

        Example:
            >>> r = Redactor()
            >>> [r.is_secret(n) for n in ("hf_token", "class_token", "num_prefix_tokens", "apiKey", "author")]
            [True, False, False, True, False]
        """
        parts = name_parts(str(name))
        if not parts:
            return False
        if parts[-1] == "token" and (len(parts) == 1 or parts[-2] not in HARMLESS_TOKENS):
            return True
        last = name_parts(str(name).rsplit(".", 1)[-1])  # `a.b.key` (Hydra): the name is `key`, a lone key
        if len(last) > 1 and last[-1] == "key" and last[-2] not in HARMLESS_KEYS:  # openai_key, hf_key
            return True
        return any(_contains(parts, p) for p in (self.url_patterns if url else self.patterns))

    def _mark(self, path: str) -> None:
        if path not in self.redacted:
            self.redacted.append(path)

    # Strings -------------------------------------------------------------------------------------
    def text(self, value: str, path: str = "") -> str:
        """``value`` with the credentials inside it redacted: URL passwords (and lone http user names), secret
        query parameters, ``name=value`` / ``name: value`` with a secret name, the token after ``Bearer``.

        Example:
            >>> Redactor().text("s3://b/x?X-Amz-Signature=ab12&v=1 https://ghp_x@github.com/o/r Bearer abc.def")
            's3://b/x?X-Amz-Signature=***&v=1 https://***@github.com/o/r Bearer ***'
        """
        if not self.enabled or not value:
            return value
        out = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@" if m["pw"] != REDACTED else m[0], value)
        out = _LONE_USER.sub(lambda m: f"{m['scheme']}{REDACTED}@", out)
        out = _QUERY.sub(self._query, out)
        out = _BEARER.sub(lambda m: f"{m['word']}{REDACTED}", out)
        out = _ASSIGN.sub(self._assignment, out)
        out = _SPACED_OPTION.sub(self._spaced_option, out)
        if out != value:
            self._mark(path)
        return out

    def _query(self, m: re.Match[str]) -> str:
        if not m["value"] or m["value"] == REDACTED or not self.is_secret(m["name"], url=True):
            return m[0]
        return f"{m['lead']}{m['name']}={REDACTED}"

    def _spaced_option(self, m: re.Match[str]) -> str:
        if m["value"] == REDACTED or not self.is_secret(m["name"]):
            return m[0]
        return f"{m['dash']}{m['name']}{m['sep']}{REDACTED}"

    def _assignment(self, m: re.Match[str]) -> str:
        value = m["value"]
        bare = value.strip("\"'")
        # `Authorization: Bearer ***`: the token after the scheme is redacted already
        if bare in ("", REDACTED, "None", "True", "False") or bare.lower() in ("bearer", "basic"):
            return m[0]
        if not self.is_secret(m["name"]):
            return m[0]
        quote = value[0] if value[0] in "\"'" and len(value) > 1 else ""
        return f"{m['q']}{m['name']}{m['q']}{m['sep']}{quote}{REDACTED}{quote}"

    # Structures ----------------------------------------------------------------------------------
    def plain(self, value: Any, path: str = "", secret: bool = False) -> Any:
        """``value`` as plain JSON values (dicts, lists, strings, finite numbers, booleans, ``None``) with every
        secret redacted. ``secret``: ``value`` sits under a secret name (every leaf but booleans and ``None`` is
        redacted)."""
        value = _expand(value)
        if isinstance(value, Mapping):
            out = {}
            for key, item in value.items():
                name = str(key)
                sub = f"{path}.{name}" if path else name
                out[name] = self.plain(item, sub, secret or (self.enabled and self.is_secret(name)))
            return out
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value) and not secret:
            if any(v.startswith("-") for v in value):  # a command line kept as a list: `--token`, `xyz`
                return self.argv(value, path)
        if isinstance(value, (list, tuple, set, frozenset)):
            items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
            return [self.plain(item, f"{path}[{i}]", secret) for i, item in enumerate(items)]
        if value is None or isinstance(value, bool):
            return value
        if secret and self.enabled:
            self._mark(path)
            return REDACTED
        if isinstance(value, float):
            return value if math.isfinite(value) else None  # JSON has no NaN or infinity
        if isinstance(value, int):
            return value
        return self.text(value if isinstance(value, str) else repr(value), path)

    # Command lines -------------------------------------------------------------------------------
    def argv(self, args: Sequence[str], path: str = "argv", start: int = 0) -> list[str]:
        """A command line with its secrets redacted; ``path[i]`` (``i`` counted from ``start``) names each
        redacted argument."""
        args = [str(a) for a in args]
        if not self.enabled:
            return args
        out: list[str] = []
        secret_next = False
        for i, arg in enumerate(args):
            where = f"{path}[{start + i}]"
            if secret_next and not arg.startswith("--"):
                secret_next = False
                self._mark(where)
                out.append(REDACTED)
                continue
            secret_next = False
            m = _OPTION_VALUE.match(arg) or _KEY_VALUE.match(arg)
            if m is not None:
                lead = m["dash"] if "dash" in m.re.groupindex else m["lead"]
                if self.is_secret(m["name"]):
                    self._mark(where)
                    out.append(f"{lead}{m['name']}={REDACTED}")
                else:
                    out.append(f"{lead}{m['name']}={self._argument(m['value'], where)}")
                continue
            option = _OPTION.match(arg)
            if option is not None:
                secret_next = self.is_secret(option["name"])
                out.append(arg)
                continue
            out.append(self._argument(arg, where))
        return out

    def _argument(self, value: str, path: str) -> str:
        """A command-line value: a JSON object or array is redacted structurally, any string by the string
        rules."""
        stripped = value.strip()
        if stripped[:1] in ("{", "["):
            try:
                parsed = json.loads(stripped)
            except ValueError:
                parsed = None
            if isinstance(parsed, (dict, list)):
                redacted = self.plain(parsed, path)
                return value if redacted == parsed else json.dumps(redacted)  # unchanged: as given
        return self.text(value, path)


def _expand(value: Any) -> Any:
    """Containers that are not plain dicts or lists, as dicts or lists (one level): dataclasses,
    ``argparse.Namespace``, OmegaConf configs (interpolations unresolved), pydantic models."""
    if isinstance(value, (str, bytes, int, float, bool)) or value is None:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Namespace):
        return vars(value)
    if type(value).__module__.startswith("omegaconf"):
        try:
            from omegaconf import OmegaConf

            if OmegaConf.is_config(value):
                return OmegaConf.to_container(value, resolve=False)
        except Exception:  # noqa: BLE001 - a broken config falls back to its repr, which gets the string rules
            return value
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        try:
            return dump()
        except Exception:  # noqa: BLE001
            return value
    return value


def strip_url_credentials(url: str | None) -> str | None:
    """A URL (a git remote) without its credentials: the password of ``user:password@``, the user of
    ``https://user@`` (a token) and secret query parameters become ``***``.

    Example:
        >>> strip_url_credentials("https://x-access-token:ghp_abc@github.com/o/r.git")
        'https://x-access-token:***@github.com/o/r.git'
        >>> strip_url_credentials("git@github.com:o/r.git")
        'git@github.com:o/r.git'
    """
    return None if url is None else Redactor().text(url)


def redact_manifest(manifest: Mapping[str, Any], extra: Iterable[str] = ()) -> dict[str, Any]:
    """A manifest record (``manifest.json`` or a line of ``runs.jsonl``), written by an earlier trainviz or with
    ``redact=False``, redacted as :class:`~trainviz.callbacks.manifest.RunManifestCallback` redacts today: the
    command line by the command-line rules, every value by the name and string rules (hyperparameters stored as
    a ``repr`` get the string rules); ``redaction`` says what was redacted (what an earlier redaction listed
    included). To scrub old run folders (see the README's "Secrets").

    Example:
        >>> old = {"command": ["python", "train.py", "--api-key", "abc"], "model": {"hparams": {"hf_token": "x"}}}
        >>> new = redact_manifest(old)
        >>> new["command"], new["model"]
        (['python', 'train.py', '--api-key', '***'], {'hparams': {'hf_token': '***'}})
        >>> new["redaction"]["redacted"]
        ['command[3]', 'model.hparams.hf_token']
    """
    r = Redactor(extra)
    record = {k: v for k, v in manifest.items() if k != "redaction"}
    if isinstance(record.get("command"), list):
        record["command"] = r.argv(record["command"], path="command")
    out: dict[str, Any] = r.plain(record)
    before = manifest.get("redaction")
    before = before if isinstance(before, Mapping) else {}
    names = [str(n) for n in before.get("extra_names") or []]
    redacted = [str(p) for p in before.get("redacted") or []]
    out["redaction"] = {
        "enabled": True,
        "extra_names": names + [n for n in r.extra if n not in names],
        "redacted": redacted + [p for p in r.redacted if p not in redacted],
    }
    return out

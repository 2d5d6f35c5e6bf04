"""Validation of the merged scopes: every problem and warning one line naming its file.

The :class:`Checker` reads each scope with the rules of
:mod:`hipchatd.config.rules`, finds the API token among its three sources,
and checks the rules that involve more than one key. It never raises: the
caller raises one ConfigError with every problem found.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hipchatd.config.describe import KeyPath, a_type, describe, dotted
from hipchatd.config.files import NotRegular, read_regular
from hipchatd.config.rules import (
    CONTACT_RULES,
    HIPCHAT_RULES,
    RENAMED_KEYS,
    TEMPLATE_ENTRY,
    Reject,
    Rule,
    dsn_problem,
)
from hipchatd.config.settings import (
    SPOOL_DSN_CREDENTIAL,
    TOKEN_CREDENTIAL,
    TOKEN_ENV,
    DaemonSettings,
    HipChatSettings,
    Secret,
)
from hipchatd.config.templates import Source, Template, TemplateProblem, compile_template
from hipchatd.sensu.events import Overrides

#: What a token may contain: printable ASCII without spaces (``!`` to ``~``). It
#: goes in an HTTP header (v2's ``Authorization: Bearer``), which cannot carry
#: control characters and encodes only Latin-1, and in v1's form body.
_TOKEN_FIRST, _TOKEN_LAST = "\x21", "\x7e"


class Checker:
    """Validates the merged scopes, collecting problems and warnings, each naming its file."""

    def __init__(self, origin: Mapping[KeyPath, str], problems: list[str]) -> None:
        self.origin = origin
        self.problems = problems
        self.warnings: list[str] = []

    def source(self, path: KeyPath) -> str:
        for end in range(len(path), 0, -1):
            if path[:end] in self.origin:
                return self.origin[path[:end]]
        return "(defaults)"

    def problem(self, path: KeyPath, message: str) -> None:
        self.problems.append(f"{self.source(path)}: {dotted(path)}: {message}")

    def reject(self, path: KeyPath, value: object, rule: Rule, why: str = "") -> None:
        got = f"{a_type(value)} (value hidden)" if rule.secret else describe(value)
        self.problem(path, f"got {got}{': ' + why if why else ''}; expected {rule.expected}")

    def read(
        self, obj: Mapping[str, Any], rules: Mapping[str, Rule], path: KeyPath
    ) -> dict[str, Any]:
        """Convert every known key of ``obj``; warn about the others."""
        values: dict[str, Any] = {}
        for key, value in obj.items():
            at = (*path, key)
            rule = rules.get(key)
            if rule is None:
                self.unknown(at, rules)
                continue
            if value is None and rule.nullable:
                values[key] = None
                continue
            if rule.fields is not None:
                if not isinstance(value, dict):
                    self.reject(at, value, rule)
                    continue
                value = self.read(value, rule.fields, at)
            try:
                values[key] = rule.convert(value)
            except Reject as exc:
                self.reject(at, value, rule, str(exc))
        return values

    def unknown(self, path: KeyPath, rules: Mapping[str, Rule]) -> None:
        key = path[-1]
        guess = RENAMED_KEYS.get(key.lower()) if rules is HIPCHAT_RULES else None
        if guess is None:
            # Here only: imported at start, difflib cost every daemon about 0.5 MB (measured).
            import difflib

            close = difflib.get_close_matches(key, list(rules), n=1)
            guess = close[0] if close else None
        hint = f'did you mean "{guess}"?' if guess else "ignored"
        self.warnings.append(f"{self.source(path)}: {dotted(path)}: unknown key; {hint}")

    def scope(
        self, merged: Mapping[str, Any], name: str, rules: Mapping[str, Rule]
    ) -> dict[str, Any]:
        obj = merged.get(name, {})
        if not isinstance(obj, dict):
            # The type only: a misplaced scope may well hold the token.
            self.problem((name,), f"got {a_type(obj)}; expected an object")
            return {}
        return self.read(obj, rules, (name,))

    def contacts(self, merged: Mapping[str, Any]) -> dict[str, Overrides]:
        """Each contact's ``hipchat`` object; other integrations' objects are not ours to check."""
        scope = merged.get("contacts", {})
        if not isinstance(scope, dict):
            self.problem(("contacts",), f"got {describe(scope)}; expected an object of contacts")
            return {}
        contacts: dict[str, Overrides] = {}
        for name, contact in scope.items():
            at = ("contacts", name)
            if not isinstance(contact, dict):
                expected = "an object of per-integration settings"
                self.problem(at, f"got {describe(contact)}; expected {expected}")
                continue
            hipchat = contact.get("hipchat", {})
            if not isinstance(hipchat, dict):
                expected = f"an object with {', '.join(CONTACT_RULES)}"
                self.problem((*at, "hipchat"), f"got {describe(hipchat)}; expected {expected}")
                continue
            contacts[name] = Overrides(**self.read(hipchat, CONTACT_RULES, (*at, "hipchat")))
        return contacts

    def token(
        self,
        from_files: str | None,
        given_in_files: bool,
        env: Mapping[str, str],
        required: bool,
        sources: Sequence[str],
    ) -> Secret:
        """The token from the first source that has one (see load_config)."""
        credential = _credential_path(env)
        from_env = env.get(TOKEN_ENV, "").strip() or None
        if given_in_files:
            file = self.source(("hipchat", "api_token"))
            used = f"hipchat.api_token from {file}"
            shadowed = [str(credential)] if credential is not None else []
            shadowed += [TOKEN_ENV] if from_env else []
            for other in shadowed:
                self.warnings.append(f"{other}: ignored; using {used}")
            return self.checked(from_files or "", f"{file}: hipchat.api_token")
        if credential is not None:
            if from_env:
                self.warnings.append(f"{TOKEN_ENV}: ignored; using {credential}")
            return self.checked(self.read_credential(credential), str(credential))
        if from_env:
            return self.checked(from_env, TOKEN_ENV)
        if required:
            files = ", ".join(sources) or "(no configuration files)"
            self.problems.append(
                f"{files}: hipchat.api_token: missing; expected a string in the hipchat scope,"
                f" or {TOKEN_ENV}, or $CREDENTIALS_DIRECTORY/{TOKEN_CREDENTIAL}"
            )
        return Secret("")

    def checked(self, token: str, where: str) -> Secret:
        """``token`` as a Secret, or a problem naming ``where`` if it cannot be sent."""
        why = _token_problem(token)
        if why is not None:
            self.problems.append(f"{where}: {why}")
        return Secret(token)

    def read_credential(self, path: Path, what: str = "the HipChat API token") -> str:
        try:
            # Surrounding whitespace is never part of a token: ``echo`` adds a newline.
            token = read_regular(path).decode("utf-8").strip()
        except NotRegular as exc:
            self.problems.append(f"{path}: {exc}; expected a file holding {what}")
            return ""
        except OSError as exc:
            self.problems.append(f"{path}: cannot read: {exc.strerror or exc}")
            return ""
        except UnicodeDecodeError:
            self.problems.append(f"{path}: not UTF-8 text; expected {what}")
            return ""
        if not token:
            self.problems.append(f"{path}: empty; expected {what}")
        return token

    def spool(self, daemon: DaemonSettings, env: Mapping[str, str]) -> DaemonSettings:
        """``daemon`` with the spool's DSN: from the files, else the systemd credential.

        The DSN (it may hold a password) is never quoted: a problem names
        where it came from and what is wrong.
        """
        spool = daemon.spool
        at = ("hipchatd", "spool", "dsn")
        credential = _credential_path(env, SPOOL_DSN_CREDENTIAL)
        if spool.backend == "sqlite":
            if spool.dsn:
                self.warnings.append(
                    f'{self.source(at)}: {dotted(at)}: ignored with backend "sqlite"'
                )
            return daemon
        if spool.dsn:
            if credential is not None:
                self.warnings.append(
                    f"{credential}: ignored; using {dotted(at)} from {self.source(at)}"
                )
            return daemon
        what = "a libpq connection URI for the PostgreSQL spool"
        if any(f": {dotted(at)}: " in problem for problem in self.problems):
            # Given, but rejected: that problem is already listed.
            return daemon
        if credential is None:
            self.problem(
                at,
                f'missing with backend "postgresql"; expected {what} in {dotted(at)}'
                f" or $CREDENTIALS_DIRECTORY/{SPOOL_DSN_CREDENTIAL}",
            )
            return daemon
        dsn = self.read_credential(credential, what)
        problem = dsn_problem(dsn) if dsn else None
        if problem is not None:
            self.problems.append(f"{credential}: {problem} (value hidden); expected {what}")
        return dataclasses.replace(daemon, spool=dataclasses.replace(spool, dsn=Secret(dsn)))

    def cross(
        self, settings: HipChatSettings, daemon: DaemonSettings, contacts: Mapping[str, Overrides]
    ) -> None:
        """Rules that involve more than one key."""
        if settings.server_url.lower().startswith("http://"):
            # Through a proxy, https:// shows it only "CONNECT host:port"; http:// shows it all.
            seen = (
                "the API token would travel in clear text"
                if settings.proxy is None
                else f"the proxy (hipchat.proxy from {self.source(('hipchat', 'proxy'))})"
                " would see the API token in every request"
            )
            self.warnings.append(
                f"{self.source(('hipchat', 'server_url'))}: hipchat.server_url: plain http://;"
                f" {seen}, use https://"
            )
        if settings.api_version == "v1":
            v1 = f'with api_version "v1" from {self.source(("hipchat", "api_version"))}'
            if settings.user is not None:
                self.problem(
                    ("hipchat", "user"),
                    f'got {describe(settings.user)} {v1}; expected api_version "v2",'
                    " the only API that can message a user",
                )
            if settings.card:
                self.problem(
                    ("hipchat", "card"),
                    f'got true {v1}; expected api_version "v2", the only API with cards',
                )
        limit = daemon.max_targets_per_event
        named = [(("hipchat", "room"), settings.room)] + [
            (("contacts", name, "hipchat", "room"), contact.room)
            for name, contact in contacts.items()
        ]
        for path, rooms in named:
            if rooms is not None and len(rooms) > limit:
                self.warnings.append(
                    f"{self.source(path)}: {dotted(path)}: {len(rooms)} rooms, but"
                    f" hipchatd.max_targets_per_event is {limit}: an event routed here"
                    f" notifies only the first {limit}; raise the limit to at least {len(rooms)}"
                )
        if daemon.tcp is None and daemon.udp is None:
            files = sorted({self.source(("hipchatd", "tcp")), self.source(("hipchatd", "udp"))})
            self.problems.append(
                f"{', '.join(files)}: hipchatd.tcp, hipchatd.udp: both null;"
                " expected at least one listener"
            )
        for name, contact in contacts.items():
            if contact.template is not None and contact.template not in settings.templates:
                path = ("contacts", name, "hipchat", "template")
                known = ", ".join(f'"{t}"' for t in settings.templates) or "none"
                self.problem(
                    path,
                    f"got {describe(contact.template)}; expected the name of a template in"
                    f" hipchat.templates (configured: {known})",
                )

    def templates(self, hipchat: dict[str, Any]) -> None:
        """Compile the template keys of the read ``hipchat`` scope in place.

        ``template_file`` becomes ``template`` (giving both is a problem);
        each template that does not compile or pass its checks is a problem
        naming the key, the template file if any, and the line. ``templates``
        is always left a mapping (empty when none compiled).
        """
        file: Source | None = hipchat.pop("template_file", None)
        inline: Source | None = hipchat.pop("template", None)
        if file is not None and inline is not None:
            self.problem(
                ("hipchat", "template_file"),
                f"given with hipchat.template from {self.source(('hipchat', 'template'))};"
                " expected one of the two",
            )
        elif file is not None or inline is not None:
            key = "template_file" if file is not None else "template"
            source = file or inline
            assert source is not None
            compiled = self.compiled(("hipchat", key), "hipchat.template", source)
            if compiled is not None:
                hipchat["template"] = compiled
        digest: Source | None = hipchat.pop("digest_template", None)
        if digest is not None:
            path = ("hipchat", "digest_template")
            compiled = self.compiled(path, dotted(path), digest, digest=True)
            if compiled is not None:
                hipchat["digest_template"] = compiled
        named: dict[str, Template] = {}
        for name, entry in hipchat.pop("templates", {}).items():
            at = ("hipchat", "templates", name)
            if not name:
                self.problem(at, "an empty name; expected a name a check can select")
                continue
            try:
                source = TEMPLATE_ENTRY.convert(entry)
            except Reject as exc:
                self.reject(at, entry, TEMPLATE_ENTRY, str(exc))
                continue
            compiled = self.compiled(at, dotted(at), source)
            if compiled is not None:
                named[name] = compiled
        hipchat["templates"] = named

    def compiled(
        self, path: KeyPath, key: str, source: Source, *, digest: bool = False
    ) -> Template | None:
        """``source`` compiled as ``key``, or None after a problem naming ``path``."""
        try:
            return compile_template(key, source, digest=digest)
        except TemplateProblem as exc:
            self.problem(path, str(exc))
            return None


def _token_problem(token: str) -> str | None:
    """Why ``token`` cannot be sent, naming the first bad character's class and place."""
    for index, char in enumerate(token, start=1):
        if _TOKEN_FIRST <= char <= _TOKEN_LAST:
            continue
        if char.isspace():
            kind = "whitespace"
        elif char.isascii():
            kind = "a control character"
        else:
            kind = "a non-ASCII character"
        return (
            f"the token (value hidden) contains {kind} at character {index} of {len(token)};"
            " expected printable ASCII without spaces, as HipChat issues them"
        )
    return None


def _credential_path(env: Mapping[str, str], name: str = TOKEN_CREDENTIAL) -> Path | None:
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / name
    return path if path.exists() else None

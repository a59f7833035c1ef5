"""Keep secrets out of messages and logs: the one URL redactor.

    python -c "from sparsepipe.core.redaction import redact_url; print(redact_url('https://u:pw@host/a?sig=1'))"
"""

from __future__ import annotations


def redact_url(url: object) -> str:
    """``url`` without its ``user:password@`` part, query string and fragment.

    Credentials live in the user-info part (``https://user:token@host``) and in query strings
    (pre-signed S3 URLs, ``?password=...`` database URIs); neither belongs in an error message, a
    log line or a cache marker. A password holding an ``@`` is removed whole (the host is what
    follows the last ``@`` of the authority). Strings without ``://`` (plain paths) keep their path.
    """
    text = str(url).split("#", 1)[0].split("?", 1)[0]
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rsplit('@', 1)[-1]}{slash}{path}"

"""The one exception type whose message is meant for the artist.

Anything raised as ``UserError`` carries a plain sentence saying what went wrong and what to do;
adapters (CLI, bot) show the message as it is. Any other exception is a bug.
"""


class UserError(Exception):
    """Something the artist can fix; ``str(err)`` is the plain-language explanation."""

"""The one exception type for a user's mistake: the CLI prints it as one line, no traceback."""


class UserError(Exception):
    """Bad input from the user (a missing folder, a bad flag value, a wrong file).

    The message is a complete sentence fragment naming the file or value and the problem;
    the CLI prints it as `imgcls: error: <message>` and exits with status 2.
    """


class PeerError(UserError):
    """The same stop as a UserError on rank 0, raised on the other ranks of a torchrun job.

    Every rank must leave the same way (or one waits in a collective forever), but only
    rank 0 prints the message: the CLI exits with status 2 and prints nothing for this one.
    """


def require_whole(name: str, value, low: int, meaning: str = "") -> int:
    """value as a setting named `name` (snake_case): an int (not a bool) >= low, else a
    UserError in the one wording every API-side limit check uses."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{name.replace('_', '-')} must be a whole number >= {low}"
                        f"{f' ({meaning})' if meaning else ''}, not {value!r}")
    return value

"""The one exception type for a user's mistake: the CLI prints it as one line, no traceback."""


class UserError(Exception):
    """Bad input from the user (a missing folder, a bad flag value, a wrong file).

    The message is a complete sentence fragment naming the file or value and the problem;
    the CLI prints it as `imgcls: error: <message>` and exits with status 2.
    """
